/* QualityFITS-UWS: send results to desktop VO tools (TOPCAT, DS9, Aladin)
 * through a SAMP hub's Web Profile (IVOA SAMP 1.3, section 5).
 *
 * A small self-contained client: the Web Profile is XML-RPC over HTTP POST
 * to the hub on http://127.0.0.1:21012/.  The page registers once
 * (samp.webhub.register: the hub asks the user to accept it), declares its
 * metadata, sends each item with samp.webhub.notifyAll and unregisters when
 * the page goes away.
 *
 * Use:  qfitsSamp.send("table", [{url, id, name}, ...])  (or "image", or an
 * MType) returns a promise of {recipients: [names], sent: n}; it rejects
 * with a qfitsSamp.SampError whose .reason is "nohub", "refused" or "hub".
 * Buttons declare what they send (see docs/web.md):
 *   <div data-samp hidden> ... <button data-samp-mtype="table.load.votable"
 *     data-samp-items='[{"url": "...", "id": "...", "name": "..."}]'> ...
 *   <p class="samp-status" role="status"></p></div>
 * Containers marked data-samp are shown once this script runs, so a page
 * without scripts shows no button that cannot work.
 */
(function () {
  "use strict";

  var KINDS = {
    table: "table.load.votable",
    image: "image.load.fits"
  };
  /* The parameter naming an item in each MType. */
  var ID_PARAM = {
    "table.load.votable": "table-id",
    "image.load.fits": "image-id"
  };
  var WHAT = {
    "table.load.votable": ["table", "tables", "TOPCAT"],
    "image.load.fits": ["image", "images", "DS9 or Aladin"]
  };
  var CALL_TIMEOUT = 15000; /* ms; registration waits for the user */
  var REGISTER_TIMEOUT = 300000;

  function SampError(reason, message) {
    this.name = "SampError";
    this.reason = reason;
    this.message = message;
  }
  SampError.prototype = Object.create(Error.prototype);

  /* -- XML-RPC -------------------------------------------------------- */
  function escape(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;")
      .replace(/>/g, "&gt;");
  }

  function encode(value) {
    if (Array.isArray(value)) {
      return "<value><array><data>" + value.map(encode).join("") +
        "</data></array></value>";
    }
    if (value !== null && typeof value === "object") {
      return "<value><struct>" + Object.keys(value).map(function (key) {
        return "<member><name>" + escape(key) + "</name>" +
          encode(value[key]) + "</member>";
      }).join("") + "</struct></value>";
    }
    /* SAMP's values are strings, lists and maps only. */
    if (typeof value === "boolean") { value = value ? "1" : "0"; }
    return "<value><string>" + escape(value === null ? "" : value) +
      "</string></value>";
  }

  function children(element, name) {
    return Array.prototype.filter.call(element.childNodes, function (n) {
      return n.nodeType === 1 && (!name || n.localName === name);
    });
  }

  function decode(valueElement) {
    var typed = children(valueElement)[0];
    if (!typed) { return valueElement.textContent; }
    switch (typed.localName) {
    case "array":
      return children(children(typed, "data")[0] || typed, "value")
        .map(decode);
    case "struct":
      var out = {};
      children(typed, "member").forEach(function (member) {
        out[children(member, "name")[0].textContent] =
          decode(children(member, "value")[0]);
      });
      return out;
    case "i4": case "int": case "double":
      return Number(typed.textContent);
    case "boolean":
      return typed.textContent.trim() === "1";
    case "nil":
      return null;
    default:
      return typed.textContent;
    }
  }

  function call(method, params, timeout) {
    var body = "<?xml version=\"1.0\"?><methodCall><methodName>" +
      escape(method) + "</methodName><params>" +
      params.map(function (p) { return "<param>" + encode(p) + "</param>"; })
        .join("") + "</params></methodCall>";
    var abort = new AbortController();
    var timer = setTimeout(function () { abort.abort(); },
                           timeout || CALL_TIMEOUT);
    return fetch(api.hubUrl, {
      method: "POST", mode: "cors", credentials: "omit", cache: "no-store",
      headers: {"Content-Type": "text/xml"}, body: body,
      signal: abort.signal
    }).catch(function () {
      if (abort.signal.aborted) {
        throw new SampError("hub", "The SAMP hub did not answer " + method +
                            " in time.");
      }
      throw new SampError("nohub", api.NO_HUB);
    }).then(function (response) {
      if (!response.ok) {
        throw new SampError("hub", "The SAMP hub answered HTTP " +
                            response.status + " to " + method + ".");
      }
      return response.text();
    }).then(function (text) {
      var xml = new DOMParser().parseFromString(text, "text/xml");
      var root = xml.documentElement;
      if (!root || root.localName !== "methodResponse") {
        throw new SampError("hub", "The SAMP hub's answer to " + method +
                            " is not XML-RPC.");
      }
      var fault = children(root, "fault")[0];
      if (fault) {
        var detail = decode(children(fault, "value")[0]) || {};
        throw new SampError(method === "samp.webhub.register" ?
                            "refused" : "hub",
                            "The SAMP hub refused " + method + ": " +
                            (detail.faultString || "no reason given"));
      }
      var value = root.querySelector("params > param > value");
      return value ? decode(value) : null;
    }).finally(function () { clearTimeout(timer); });
  }

  /* -- registration, kept for the page's life ------------------------- */
  var registration = null; /* a promise of the samp.webhub.register map */
  var privateKey = null; /* its key, once registered */

  function register(onWaiting) {
    if (!registration) {
      registration = call("samp.webhub.ping", [])
        .then(function () {
          if (onWaiting) { onWaiting(); }
          return call("samp.webhub.register", [{"samp.name": api.name}],
                      REGISTER_TIMEOUT);
        })
        .then(function (map) {
          var key = map["samp.private-key"];
          return call("samp.webhub.declareMetadata", [key, {
            "samp.name": api.name,
            "samp.description.text": api.description
          }]).then(function () {
            privateKey = key;
            return key;
          });
        });
      registration.catch(function () { registration = null; });
    }
    return registration;
  }

  function unregisterCall(key, keepalive) {
    return fetch(api.hubUrl, {
      method: "POST", mode: "cors", credentials: "omit", keepalive: keepalive,
      headers: {"Content-Type": "text/xml"},
      body: "<?xml version=\"1.0\"?><methodCall><methodName>" +
        "samp.webhub.unregister</methodName><params><param>" + encode(key) +
        "</param></params></methodCall>"
    }).catch(function () { return null; });
  }

  /* Leave the hub (the page also does when it goes away). */
  function unregister() {
    var key = privateKey;
    registration = null;
    privateKey = null;
    return key ? unregisterCall(key, false).then(function () {
      return null;
    }) : Promise.resolve(null);
  }

  function nameOf(key, clientId) {
    return call("samp.webhub.getMetadata", [key, clientId])
      .then(function (meta) {
        return (meta && meta["samp.name"]) || clientId;
      }, function () { return clientId; });
  }

  function notifyEach(key, mtype, items) {
    var recipients = {};
    return items.reduce(function (chain, item) {
      return chain.then(function () {
        var params = {"url": item.url, "name": item.name || item.id};
        params[ID_PARAM[mtype] || "id"] = item.id || item.url;
        return call("samp.webhub.notifyAll", [key, {
          "samp.mtype": mtype, "samp.params": params
        }]).then(function (ids) {
          (Array.isArray(ids) ? ids : []).forEach(function (id) {
            recipients[id] = true;
          });
        });
      });
    }, Promise.resolve()).then(function () {
      return Promise.all(Object.keys(recipients).map(function (id) {
        return nameOf(key, id);
      }));
    });
  }

  /* Send items ({url, id, name}) with an MType (or "table", "image"). */
  function send(kind, items, options) {
    var mtype = KINDS[kind] || kind;
    var onWaiting = options && options.onWaiting;
    if (!items || !items.length) {
      return Promise.reject(new SampError("hub", "Nothing to send."));
    }
    var attempt = function (again) {
      return register(onWaiting).then(function (key) {
        return notifyEach(key, mtype, items).catch(function (error) {
          /* The hub may have gone or restarted since: the key is stale;
           * register again (once) if a hub answers. */
          registration = null;
          privateKey = null;
          if (again && error.reason === "hub") { return attempt(false); }
          throw error;
        });
      });
    };
    return attempt(true).then(function (names) {
      return {recipients: names, sent: items.length, mtype: mtype};
    });
  }

  /* -- buttons ------------------------------------------------------- */
  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

  function describe(result) {
    var what = WHAT[result.mtype] || ["item", "items", "a SAMP tool"];
    var n = result.recipients.length;
    if (n === 0) {
      return "The SAMP hub is running, but no tool in it loads " + what[1] +
        " (" + result.mtype + "): start " + what[2] + " and try again.";
    }
    return "Sent " + plural(result.sent, what[0], what[1]) + " to " +
      plural(n, "client", "clients") + ": " + result.recipients.join(", ") +
      ".";
  }

  function statusOf(button) {
    var id = button.getAttribute("data-samp-status");
    var box = button.closest("[data-samp]");
    return (id && document.getElementById(id)) ||
      (box && box.querySelector(".samp-status"));
  }

  function say(status, text, problem) {
    if (!status) { return; }
    status.textContent = text;
    status.classList.toggle("problem", Boolean(problem));
  }

  function onClick(event) {
    var button = event.currentTarget;
    var status = statusOf(button);
    var items;
    try {
      items = JSON.parse(button.getAttribute("data-samp-items") || "[]");
    } catch (error) {
      say(status, "This button has no valid list of files to send.", true);
      return;
    }
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    say(status, "Contacting the SAMP hub…");
    send(button.getAttribute("data-samp-mtype"), items, {
      onWaiting: function () {
        say(status, "Waiting for the SAMP hub: accept “" + api.name +
            "” in its dialog if it asks.");
      }
    })
      .then(function (result) {
        say(status, describe(result), result.recipients.length === 0);
      }, function (error) {
        say(status, error.message || String(error), true);
      }).finally(function () {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      });
  }

  function bind(root) {
    (root || document).querySelectorAll("[data-samp]").forEach(
      function (box) { box.hidden = false; });
    (root || document).querySelectorAll("button[data-samp-mtype]").forEach(
      function (button) {
        if (!button.dataset.sampBound) {
          button.dataset.sampBound = "1";
          button.addEventListener("click", onClick);
        }
      });
  }

  var api = {
    hubUrl: "http://127.0.0.1:21012/",
    name: "QualityFITS-UWS",
    description: "Image-quality assessment of FITS images (a UWS service)",
    NO_HUB: "No SAMP hub found: start TOPCAT or DS9 (or another SAMP hub) " +
      "and try again.",
    KINDS: KINDS,
    SampError: SampError,
    send: send,
    unregister: unregister,
    bind: bind
  };
  window.qfitsSamp = api;

  window.addEventListener("pagehide", function () {
    /* Best effort: the page is going away. */
    if (privateKey) { unregisterCall(privateKey, true); }
    registration = null;
    privateKey = null;
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { bind(); });
  } else {
    bind();
  }
}());
