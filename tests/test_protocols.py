"""Protocol variants of the shortcut analysis (fslib.protocols)."""

from __future__ import annotations

import pytest
import torch
from test_dfm import FakeRun, TinyNet, uint8_data

from fslib import dfm, report
from fslib import protocols as variants
from fslib.protocols import Variant, variant_analyses, variant_table

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


CFG = dfm.DFMConfig(n_null=3, n_boot=10)


def _setup(tmp_path):
    run = FakeRun(tmp_path / "runs" / "tiny-cifar10-0789", TinyNet())
    images, labels = uint8_data(8, 8, n=60)  # 20 per class
    return run, images, labels


def test_the_book_variant_is_the_chapters_analysis_and_all_variants_share_the_held_out_images(cache, tmp_path):
    run, images, labels = _setup(tmp_path)
    names = ["book", "official protocol", "2x ranking images", "DFM of 10 %", "2x2 blocks"]
    out = variant_analyses(run, images, labels, names, per_class=2, n_score=24, config=CFG, device="cpu",
                           progress=False)
    assert list(out) == names
    # the book variant ranks on the chapters' ranking set and gives the same DFMs as run_dfms there
    rank, _ = dfm.rank_score_split(labels, 6, 0, seed=0)
    assert torch.equal(out["book"].rank, rank)
    direct = dfm.run_dfms(run, images[rank], labels[rank], config=CFG, device="cpu", progress=False)
    assert torch.equal(out["book"].dfms, direct.dfms[0.05])
    # one held-out set for every variant but the official one, disjoint from every ranking chunk
    held = out["book"].score
    assert len(held) == 24 and all(torch.equal(a.score, held) for n, a in out.items() if n != "official protocol")
    assert not set(held.tolist()) & set(out["2x ranking images"].rank.tolist())
    assert torch.equal(out["official protocol"].score, out["official protocol"].rank)
    # the two-chunk DFM is the top of the mean map of both chunks, i.e. of their union
    union = out["2x ranking images"].rank
    both = dfm.ablation_loss(run.model, run.normalize(images[union]), labels[union], 3, device="cpu", progress=False)
    assert torch.equal(out["2x ranking images"].dfms, dfm.dominant_frequency_maps(both, 0.05))
    # sizes and blocks follow the variant
    assert out["DFM of 10 %"].dfms.sum() > out["book"].dfms.sum()
    assert torch.equal(out["DFM of 10 %"].dfms, dfm.dominant_frequency_maps(direct.loss_maps, 0.10))
    assert not torch.equal(out["2x2 blocks"].dfms, out["book"].dfms)


def test_the_table_applies_the_verdict_rule_of_report(cache, tmp_path):
    run, images, labels = _setup(tmp_path)
    out = variant_analyses(run, images, labels, ["book", "official protocol"], per_class=2, n_score=24, config=CFG,
                           device="cpu", progress=False)
    table = variant_table(out, per_class=2)
    assert list(table.index) == ["book (default)", "official protocol"]
    assert table.loc["official protocol", "scored on"] == "the ranking images"
    assert table.loc["book (default)", "scored on"] == "24 held-out images"
    assert table.loc["book (default)", "ranked on (per class)"] == 2
    for name, (_, row) in zip(out, table.iterrows()):
        verdict, strong = report.shortcut_verdict(out[name].table)
        assert row["verdict"] == verdict and row["strong"] == int(strong.sum())
        assert row["mean TPR"] == pytest.approx(out[name].table["tpr"].mean())
        assert row["beat the null"] == int(out[name].table["shortcut"].sum())


def test_bad_variants_get_clear_errors(cache, tmp_path):
    run, images, labels = _setup(tmp_path)
    with pytest.raises(ValueError, match="unknown protocol variant 'bogus'; valid: book, official protocol"):
        variants.variant("bogus")
    with pytest.raises(ValueError, match="chunks must be an int >= 1"):
        Variant("x", chunks=0)
    with pytest.raises(ValueError, match="top must be a fraction"):
        Variant("x", top=1.5)
    with pytest.raises(ValueError, match="unique names"):
        variant_analyses(run, images, labels, ["book", "book"], per_class=2, n_score=10, device="cpu", progress=False)
    with pytest.raises(ValueError, match="fewer than the"):  # 8 chunks of 3 per class need 24 images per class
        variant_analyses(run, images, labels, ["8x ranking images"], per_class=3, n_score=10, device="cpu",
                         progress=False)
    with pytest.raises(ValueError, match="default variant 'book' is not among"):
        variant_table({}, per_class=2)


def test_a_variant_takes_the_dfm_size_and_block_of_the_config_unless_it_sets_them(cache, tmp_path):
    run, images, labels = _setup(tmp_path)
    cfg = CFG.with_(top=0.10, patch_size=2)
    out = variant_analyses(run, images, labels, ["book", "DFM of 10 %", "2x2 blocks"], per_class=2, n_score=12,
                           config=cfg.with_(top=0.20), test=False, device="cpu", progress=False)
    assert (out["book"].variant.top, out["book"].variant.patch_size) == (0.20, 2)
    assert out["DFM of 10 %"].variant.top == 0.10 and out["book"].table is None
    rank, _ = dfm.rank_score_split(labels, 6, 0, seed=0)
    direct = dfm.run_dfms(run, images[rank], labels[rank], config=cfg, device="cpu", progress=False)
    assert torch.equal(out["book"].dfms, dfm.dominant_frequency_maps(direct.loss_maps, 0.20))
    with pytest.raises(ValueError, match="was not tested"):
        variant_table(out, per_class=2)
