"""The documentation says what the code does."""

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


def test_configuration_page_lists_every_setting():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in QualityConfig().to_dict():
        assert f"`{name}`" in text, name
