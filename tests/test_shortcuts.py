"""Tests of fslib.shortcuts: the API on any model, the result folder, the command end to end,
every kind of bad input (a clear message and exit status 2), resume after an interruption,
and the README's snippet."""

from __future__ import annotations

import html.parser
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fourier_probe import FREQS, probe_subject, uint8_set
from PIL import Image

from fslib import data, dfm, report, shortcuts
from fslib.cli import main
from fslib.io import sha256_file
from fslib.shortcuts import InputError, loading, outputs

ROOT = Path(__file__).resolve().parents[1]

MODEL_PY = '''
import os

import torch.nn as nn


class Tiny(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        stop = os.environ.get("TINY_STOP_AFTER")
        if stop and self.calls > int(stop):
            raise KeyboardInterrupt
        return self.fc(self.pool(self.conv(x).relu()).flatten(1))


class Fixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def tiny(num_classes=3):
    return Tiny(num_classes)


def fixed():
    return Fixed()


def broken(num_classes=3):
    raise RuntimeError("no GPU here")


def not_a_model():
    return 42
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's files: model.py, weights.pt (tiny, 3 classes), images/val/<class>/*.png, a cache."""
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TINY_STOP_AFTER", raising=False)
    (tmp_path / "model.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    model = loading.build_model(f"{tmp_path / 'model.py'}:tiny", 3)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    rng = np.random.default_rng(0)
    for c in ("emu", "cat", "dog"):
        (tmp_path / "images" / "val" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "images" / "val" / c / f"{i}.png")
    return tmp_path


def args(user, *extra, model="tiny", out="out"):
    base = [str(user / "images"), "--model", f"{user / 'model.py'}:{model}", "--size", "16", "--normalize", "0.5,0.25",
            "--n-null", "3", "--n-boot", "20", "--quiet"]
    return ["shortcuts", *base, *(["--out", str(user / out)] if out else []), *extra]


# --------------------------------------------------------------------------- parsing
def test_model_specs_and_their_errors():
    assert loading.parse_model_spec("timm:convnext_tiny") == loading.ModelSpec("timm", "convnext_tiny")
    assert loading.parse_model_spec("a/b.py:make").path == Path("a/b.py")
    for bad, why in (("resnet18", "expected"), ("foo:bar", "unknown kind 'foo'"), ("net.py:1x", "not a Python name")):
        with pytest.raises(InputError, match=why):
            loading.parse_model_spec(bad)


def test_normalisations_parse_or_name_what_is_valid():
    assert loading.parse_normalization("none") == ((0.0,) * 3, (1.0,) * 3)
    assert loading.parse_normalization("1,2,3,4,5,6") == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert loading.parse_normalization("CIFAR10")[0] == (0.4914, 0.4822, 0.4465)
    for bad, why in (("0.5,0.2,0.1", "has 3 numbers"), ("imagnet", "did you mean imagenet"), ("0.5,0", "positive")):
        with pytest.raises(InputError, match=why):
            loading.parse_normalization(bad)


@pytest.mark.slow
def test_torchvision_models_by_name_with_close_matches():
    model = loading.build_model("torchvision:resnet18", 7)
    assert model.fc.out_features == 7
    with pytest.raises(InputError, match="unknown torchvision model 'resnet181'; did you mean resnet18"):
        loading.build_model("torchvision:resnet181", 7)
    with pytest.raises(InputError, match="--num-classes"):
        loading.build_model("torchvision:resnet18", None)


def test_timm_is_optional_and_used_when_present(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(InputError, match=r"needs timm, which is not installed: pip install 'fslib\[models\]'"):
        loading.build_model("timm:resnet18", 3)
    fake = types.ModuleType("timm")
    fake.list_models = lambda: ["resnet18", "vit_small_patch16_224"]
    fake.create_model = lambda name, pretrained, num_classes: torch.nn.Linear(4, num_classes)
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert loading.build_model("timm:resnet18", 5).out_features == 5
    with pytest.raises(InputError, match="did you mean vit_small_patch16_224"):
        loading.build_model("timm:vit_small_patch16", 5)


def test_model_files_and_their_errors(user):
    path = user / "model.py"
    assert type(loading.build_model(f"{path}:fixed", 10)).__name__ == "Fixed"  # no num_classes argument: not passed
    for spec, why in ((f"{user}/none.py:tiny", "does not exist"), (f"{path}:tinny", "no function 'tinny'; did you mean tiny"),
                      (f"{path}:broken", r"broken\(num_classes=3\) failed: RuntimeError: no GPU here"),
                      (f"{path}:not_a_model", "returned int, not a torch.nn.Module")):
        with pytest.raises(InputError, match=why):
            loading.build_model(spec, 3)
    (user / "bad.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(InputError, match="failed to import: ModuleNotFoundError"):
        loading.build_model(f"{user / 'bad.py'}:x", 3)


def test_weights_are_read_safely_unpacked_and_checked_key_by_key(user):
    model = loading.build_model(f"{user / 'model.py'}:tiny", 3)
    state = torch.load(user / "weights.pt", weights_only=True)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, user / "ckpt.pt")
    record = loading.load_weights(model, user / "ckpt.pt")
    assert "key 'state_dict'" in record["read"] and "'module.' prefix removed" in record["read"]
    assert record["sha256"] == sha256_file(user / "ckpt.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    other = loading.build_model(f"{user / 'model.py'}:tiny", 5).state_dict()
    torch.save({**other, "extra.bias": torch.zeros(1)}, user / "other.pt")
    with pytest.raises(InputError, match=r"not in the model: extra.bias; shape \(file vs model\): fc.weight \(5, 24\) vs"):
        loading.load_weights(model, user / "other.pt")
    torch.save({k: v for k, v in state.items() if k != "conv.bias"}, user / "less.pt")
    with pytest.raises(InputError, match="missing from the file: conv.bias"):
        loading.load_weights(model, user / "less.pt")
    torch.save(types.SimpleNamespace(a=1), user / "pickle.pt")  # not a plain state dict: refused, not unpickled
    with pytest.raises(InputError, match="weights_only=True"):
        loading.load_weights(model, user / "pickle.pt")
    (user / "w.safetensors").write_bytes(b"")
    if loading.importlib.util.find_spec("safetensors") is None:
        with pytest.raises(InputError, match="pip install 'fslib\\[models\\]'"):
            loading.load_weights(model, user / "w.safetensors")


def test_probe_names_a_size_the_model_cannot_take_and_a_class_mismatch(user):
    fixed = loading.build_model(f"{user / 'model.py'}:fixed", None)
    assert loading.probe_model(fixed, 16, "abc") == 3
    with pytest.raises(InputError, match=r"cannot take 3x20x20 images \(--size 20\)"):
        loading.probe_model(fixed, 20, "abc")
    with pytest.raises(InputError, match="3 outputs but the data has 2 classes"):
        loading.probe_model(fixed, 16, "ab")


# --------------------------------------------------------------------------- the API
@pytest.mark.slow
def test_analyse_finds_the_planted_shortcuts_and_reads_them_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    images, labels = uint8_set(seed=6, per_class=6)
    subject = probe_subject("planted")
    kw = dict(n_rank=8, n_score=16, tops=(2 / 64, 0.25), config=dfm.DFMConfig(n_null=5, n_boot=50), device="cpu")
    result = shortcuts.analyse(subject, images, labels, class_names=subject.class_names, progress=False, **kw)
    for k, (r, s) in enumerate(FREQS):
        assert result.dfms[k, r, s]
    assert list(result.table["name"]) == ["w", "x", "y", "z"] and result.tops == (2 / 64, 0.25)
    assert set(result.sweep["top"]) == {2 / 64, 0.25} and len(result.sweep) == 8
    assert list(result.verdicts) == list(report.class_verdicts(result.table))
    assert result.verdict == report.shortcut_verdict(result.table)[0]
    est = shortcuts.estimate(subject, images, labels, probe=False, **kw)
    assert [s.status for s in est.stages] == ["cached"] * 3  # the analysis filled the cache the estimate reads
    for plot in (result.plot_dfms, result.plot_rates, result.plot_thresholds, result.plot_examples, result.plot_loss_maps):
        fig, _ = plot()
        assert fig.axes
    with pytest.raises(ValueError, match="mean=..., std=..."):
        shortcuts.analyse(torch.nn.Linear(2, 2), images, labels, n_rank=8)


@pytest.mark.slow
def test_saving_is_all_or_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    images, labels = uint8_set(seed=7, per_class=4)
    result = shortcuts.analyse(probe_subject("save"), images, labels, class_names="wxyz", n_rank=4, n_score=8,
                               config=dfm.DFMConfig(n_null=2, n_boot=10), device="cpu", progress=False)
    out = result.save(tmp_path / "res")
    assert (out / "report.html").exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        result.save(out)

    def fail(*a):
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "_write_figures", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        result.save(tmp_path / "res2")
    with pytest.raises(RuntimeError, match="disk full"):
        result.save(out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "res"]  # no half-written folder anywhere
    assert (out / "report.html").exists()  # the previous result is untouched


# --------------------------------------------------------------------------- bad input: exit status 2
@pytest.mark.parametrize("case,why", [
    ("missing", "does not exist"), ("empty", "no class folders"), ("classes", "3 outputs but the data has 2 classes"),
    ("num-classes", "--num-classes 5, but .* has 3 classes"), ("truncated", "cannot be read: .*cat/0.png"),
    ("weights", r"do not fit the architecture .*fc.weight \(5, 24\) vs \(3, 24\)"), ("norm", "has 3 numbers"),
    ("model", "did you mean resnet18"), ("timm", "pip install"), ("size", r"cannot take 3x20x20 images \(--size 20\)"),
    ("dataset", "did you mean cifar10"), ("n-rank", "the smallest class has 8"), ("n-score", "--n-score 2: every class needs"),
    ("out", "exists; .* --overwrite"),
    ("no-out", "--out DIR is required"), ("patch", "patch_size must be a positive int")])
def test_bad_input_is_named_with_exit_status_2(user, capsys, monkeypatch, case, why):
    a = args(user, "--dry-run")
    imgs = str(user / "images")
    if case == "missing":
        a[1] = str(user / "nowhere")
    elif case == "empty":
        (user / "empty").mkdir()
        a[1] = str(user / "empty")
    elif case == "classes":
        a = args(user, "--dry-run", model="fixed")
        (user / "two").mkdir()
        for c in ("a", "b"):
            (user / "two" / c).mkdir()
            Image.new("RGB", (16, 16)).save(user / "two" / c / "x.png")
        a[1] = str(user / "two")
    elif case == "num-classes":
        a += ["--num-classes", "5"]
    elif case == "truncated":
        p = user / "images" / "val" / "cat" / "0.png"
        p.write_bytes(p.read_bytes()[:60])
        a += ["--n-rank", "3", "--n-score", "21"]  # every image: the truncated one among them
    elif case == "weights":
        torch.save(loading.build_model(f"{user / 'model.py'}:tiny", 5).state_dict(), user / "five.pt")
        a += ["--weights", str(user / "five.pt")]
    elif case == "norm":
        a[a.index("--normalize") + 1] = "0.5,0.2,0.1"
    elif case == "model":
        a[a.index("--model") + 1] = "torchvision:resnet181"
    elif case == "timm":
        monkeypatch.setitem(sys.modules, "timm", None)
        a[a.index("--model") + 1] = "timm:resnet18"
    elif case == "size":
        a = args(user, "--dry-run", model="fixed")
        a[a.index("--size") + 1] = "20"
    elif case == "dataset":
        a[1] = "cifar1"
    elif case == "n-rank":
        a += ["--n-rank", "30"]
    elif case == "n-score":
        a += ["--n-rank", "3", "--n-score", "2"]
    elif case == "out":
        (user / "out").mkdir()
        a.remove("--dry-run")
    elif case == "no-out":
        a = [x for x in a if x != "--dry-run"][: a.index("--out") - 1] + ["--quiet"]
    elif case == "patch":
        a += ["--patch-size", "0"]
    assert imgs  # the base arguments name the user's folder
    assert main(a) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(why, err), err


def test_an_unknown_method_is_refused_with_the_registry_choices(user, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args(user, "--method", "bogus", "--dry-run"))
    assert exit_.value.code == 2 and re.search(r"invalid choice: 'bogus' \(choose from '?exact", capsys.readouterr().err)


def test_dry_run_prints_the_plan_and_estimate_and_writes_nothing(user, capsys):
    for i in range(8, 12):  # 4 unreadable dog images among 12: drawing 8 readable ones meets some of them
        (user / "images" / "val" / "dog" / f"{i}.png").write_bytes(b"\x89PNG truncated")
    assert main(args(user, "--dry-run", "--skip-bad-images", "--same-images", "--n-rank", "24")) == 0
    out = capsys.readouterr().out
    assert re.search(r"skipped  \d unreadable: dog/(8|9|10|11).png \(UnidentifiedImageError", out), out
    for text in ("fslib shortcuts: plan", "3 classes, 28 images found, 24 read", "24 ranking + the same images",
                 "cost estimate:", "ranking (exact, patch 1)", "total:"):
        assert text in out, text
    cached = user / "cache" / "dfms"
    assert not (user / "out").exists() and (not cached.exists() or not any(cached.iterdir()))


# --------------------------------------------------------------------------- end to end
def check_result_folder(out: Path, classes: list[str], n_rank: int, n_score: int, weights: Path) -> None:
    """Every output of the command, checked for content, not just presence."""
    figures = {"dfm_grid.png", "tpr_fpr.png", "examples.png", "loss_maps.png", "tpr_vs_threshold.png"}
    assert {p.name for p in out.iterdir()} == {"dfms.npz", "dfms.npz.sha256", "dfms.json", "shortcut_test.csv",
                                              "provenance.json", "report.md", "report.html", "figures"}
    assert {p.name for p in (out / "figures").iterdir()} == figures
    for f in figures:
        with Image.open(out / "figures" / f) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    saved = dfm.load_dfms(out / "dfms.npz")
    assert saved.loss_maps.shape == (3, 16, 16) and set(saved.dfms) == {0.05, 0.2}
    for top, m in saved.dfms.items():
        assert m.dtype == torch.bool and abs(int(m[0].sum()) - round(top * 256)) <= 1
    assert saved.provenance["class_names"] == classes == json.loads((out / "dfms.json").read_text())["class_names"]
    table = pd.read_csv(out / "shortcut_test.csv")
    assert len(table) == 6 and sorted(set(table["top"])) == [0.05, 0.2] and list(table["name"][:3]) == classes
    assert ((table["tpr_lo"] <= table["tpr"]) & (table["tpr"] <= table["tpr_hi"])).all()
    for _, part in table.groupby("top"):
        assert list(part["verdict"]) == list(report.class_verdicts(part.reset_index(drop=True)))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["weights"]["sha256"] == sha256_file(weights) and prov["classes"] == classes
    rank, score = prov["protocol"]["rank_files"], prov["protocol"]["score_files"]
    assert len(rank) == n_rank and len(score) == n_score and not set(rank) & set(score)
    assert prov["estimate"]["total_seconds"] > 0 and prov["verdict"] in report.VERDICTS
    md = (out / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+)\)", md)
    assert {Path(x).name for x in links} == figures and all((out / x).exists() for x in links)
    assert all(c in md for c in classes) and f"Frequency shortcuts: {prov['verdict']}" in md

    class Sources(html.parser.HTMLParser):
        found: list = []

        def handle_starttag(self, tag, attrs):
            self.found += [(tag, v) for k, v in attrs if k in ("src", "href")]

    page = Sources()
    page.feed((out / "report.html").read_text())
    assert len(page.found) == len(figures) and all(t == "img" and v.startswith("data:image/png;base64,")
                                                   for t, v in page.found)  # self-contained


@pytest.mark.slow
def test_the_command_end_to_end_in_a_fresh_process(user):
    cmd = [sys.executable, "-m", "fslib", *args(user, "--weights", str(user / "weights.pt"), "--top", "0.05,0.2",
                                                "--n-rank", "6", "--n-score", "15")]
    env = {**dict(__import__("os").environ), "FSLIB_CACHE": str(user / "cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    for text in ("cost estimate:", "verdict:", "emu", "report.html"):
        assert text in done.stdout
    check_result_folder(user / "out", ["cat", "dog", "emu"], 6, 15, user / "weights.pt")
    # the command is the API: the same protocol in this process, in a fresh cache, gives the same DFMs
    model = loading.build_model(f"{user / 'model.py'}:tiny", 3)
    loading.load_weights(model, user / "weights.pt")
    images = data.load_folder(user / "images", 16, per_class=7, progress=False)
    result = shortcuts.analyse(model, images, mean=(0.5,) * 3, std=(0.25,) * 3, n_rank=6, n_score=15, tops=(0.05, 0.2),
                               config=dfm.DFMConfig(n_null=3, n_boot=20), device="cpu", progress=False)
    assert torch.equal(result.dfms, dfm.load_dfms(user / "out" / "dfms.npz").dfms[0.05])
    assert result.files("score") == json.loads((user / "out" / "provenance.json").read_text())["protocol"]["score_files"]


@pytest.mark.slow
def test_an_interrupted_command_writes_nothing_and_resumes(user, monkeypatch, capsys):
    monkeypatch.setenv("TINY_STOP_AFTER", "12")  # past the probes, inside the ranking
    run = ["--n-rank", "6", "--n-score", "6", "--weights", str(user / "weights.pt")]  # the same weights: the same key
    assert main(args(user, *run)) == 130
    assert "the same command resumes" in capsys.readouterr().err
    assert not (user / "out").exists() and not list(user.glob(".out*"))
    partial = list((user / "cache" / "dfms").glob("*.partial.npz"))
    assert len(partial) == 1 and 0 < np.load(partial[0])["done"].sum()
    monkeypatch.delenv("TINY_STOP_AFTER")
    assert main(args(user, *run)) == 0
    out = capsys.readouterr().out
    assert "resumes" in out, out
    resumed = dfm.load_dfms(user / "out" / "dfms.npz")
    assert main(args(user, *run, "--cache", str(user / "fresh"), out="again")) == 0
    fresh = dfm.load_dfms(user / "again" / "dfms.npz")
    assert torch.allclose(resumed.loss_maps, fresh.loss_maps, atol=1e-5)


@pytest.mark.slow
def test_the_readme_snippet_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Using fslib on your own model"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for old, new in (("torchvision.models.resnet18(num_classes=10)", "tiny_model()"), ("size=224", "size=16")):
        assert snippet.count(old) == 1, f"the README snippet changed: {old!r}"
        snippet = snippet.replace(old, new)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))

    def tiny_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(4, 10))

    torch.save(tiny_model().state_dict(), "my_weights.pt")
    rng = np.random.default_rng(0)
    for c in range(10):
        (tmp_path / "my_images" / f"class{c}").mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (18, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "my_images" / f"class{c}" / f"{i}.png")
    scope = {"tiny_model": tiny_model}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert isinstance(scope["result"], shortcuts.ShortcutResult) and (tmp_path / "my_results" / "report.html").exists()


@pytest.mark.slow
def test_many_classes_wrap_the_map_grids(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 13))
    images = torch.randint(0, 256, (26, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    result = shortcuts.analyse(model, images, torch.arange(26) % 13, mean=(0.5,) * 3, std=(0.25,) * 3, n_rank=13,
                               n_score=13, config=dfm.DFMConfig(n_null=2, n_boot=10), device="cpu", progress=False)
    out = result.save(tmp_path / "res")
    with Image.open(out / "figures" / "dfm_grid.png") as grid:
        assert grid.size[1] > 0.2 * grid.size[0]  # two rows of ten panels, not one row of thirteen
    assert list(result.table["name"]) == [str(i) for i in range(13)]
