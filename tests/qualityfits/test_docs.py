"""The documentation says what the code does."""

import re
from pathlib import Path

from qualityfits.config import QualityConfig
from qualityfits.metrics import METRICS, QA_FLAGS

ROOT = Path(__file__).resolve().parents[2]


def test_metrics_page_lists_every_metric_with_its_unit():
    text = (ROOT / "docs" / "metrics.md").read_text()
    for metric in METRICS:
        row = f"| `{metric.name}` | {metric.unit or '—'} |"
        assert row in text, metric.name
    for flag in QA_FLAGS:
        assert f"| `{flag.name}` |" in text, flag.name


def test_configuration_page_lists_every_setting_with_its_default():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name, value in QualityConfig().to_dict().items():
        match = re.search(rf"^\| `{name}` \| ([^|]+) \|", text,
                          re.MULTILINE)
        assert match, f"{name} missing from docs/configuration.md"
        if isinstance(value, bool):
            assert match.group(1).strip() == str(value).lower(), name
            continue
        shown = [float(v) for v in match.group(1).split(",")]
        expected = list(value) if isinstance(value, (tuple, list)) else [
            value]
        assert shown == [float(v) for v in expected], (name, shown, value)
