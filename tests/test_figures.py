"""Figure details that the report's browser test does not see: axes and their limits."""
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from dashboards import figures


@pytest.fixture
def kept(monkeypatch):
    """The figures each call would have saved, kept open for the test to read."""
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.append(fig))
    yield saved
    for fig in saved:
        plt.close(fig)


def test_a_majority_baseline_far_below_the_scores_does_not_squash_them(kept, tmp_path):
    """STS-B's majority-class score is 0 (a constant prediction correlates with nothing): its line stretched the
    axis from 0 to 90 and the seeds, 84 to 88, shared one strip. The axis keeps the scores; the line's value is
    written on the panel. A baseline within reach (CB's 50) is drawn as before."""
    df = pd.DataFrame([{"task": t, "method": m, "seed": s, "test_score": base + 0.01 * s + 0.02 * (m == "sam")}
                       for t, base in (("STS-B", 0.84), ("CB", 0.60)) for m in ("full", "sam") for s in range(3)])
    figures.seeds_figure(df, ["full", "sam"], {"STS-B": 0.0, "CB": 0.5}, tmp_path / "x.svg")
    axes = {ax.get_title().split(" ")[0]: ax for ax in kept[0].axes if ax.get_visible()}
    low, high = axes["STS-B"].get_ylim()
    assert 75 < low < 84 and 88 < high < 95, (low, high)
    assert any("majority class 0.0, below" in t.get_text() for t in axes["STS-B"].texts)
    assert [line.get_ydata()[0] for line in axes["CB"].get_lines() if line.get_linestyle() == "--"] == [50.0]
    assert not axes["CB"].texts
