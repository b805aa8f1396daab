"""wstream from Python: the CLI's answers, timm's references, errors, the GIL, Ctrl-C, memory."""

import json
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import wstream
from conftest import DATA, FIXTURES, LARGE, MODELS, membox, run_cli, skip_or_fail


def stems(name):
    return sorted(p.name[: -len(".input.npy")] for p in (FIXTURES / name / "reference").glob("*.input.npy"))


@pytest.fixture(scope="module", params=MODELS)
def fixture(request):
    return request.param, wstream.create_model(FIXTURES / request.param, threads=2)


def test_logits_equal_the_clis(fixture, cli):
    name, m = fixture
    ref = FIXTURES / name / "reference"
    for stem in stems(name):
        out = run_cli(cli, "classify", "--json", "--logits", "--threads", "2", "--model", FIXTURES / name,
                      ref / f"{stem}.input.npy")
        assert out.returncode == 0, out.stderr
        theirs = np.array(json.loads(out.stdout)["models"][0]["logits"], dtype=np.float32)
        x = np.load(ref / f"{stem}.input.npy").reshape(1, 3, *m.data_config["input_size"][1:])
        ours = m(x)
        assert ours.shape == (1, m.num_classes) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours[0], theirs, err_msg=f"{name} {stem}")
    # From an image: the CLI decodes and preprocesses; m.transform is the same code. The CLI evaluates at
    # test_crop_pct as timm's validate.py; create_model at the train size as resolve_data_config.
    out = run_cli(cli, "classify", "--json", "--logits", "--threads", "2", "--use-train-size", "--model",
                  FIXTURES / name, DATA / "cat.jpg")
    assert out.returncode == 0, out.stderr
    theirs = np.array(json.loads(out.stdout)["models"][0]["logits"], dtype=np.float32)
    np.testing.assert_array_equal(m(m.transform(DATA / "cat.jpg")[None])[0], theirs)


def test_parity_with_timms_references(fixture):
    name, m = fixture
    ref = FIXTURES / name / "reference"
    for stem in stems(name):
        x = np.load(ref / f"{stem}.input.npy")
        x = x.reshape(1, *x.shape[-3:])
        np.testing.assert_allclose(m(x), np.load(ref / f"{stem}.logits.npy").reshape(1, -1), rtol=0, atol=2e-5)
        feats = m.forward_features(x)
        np.testing.assert_allclose(feats, np.load(ref / f"{stem}.features.npy").reshape(1, -1), rtol=0, atol=2e-5)
        assert m.forward_head(feats, pre_logits=True) is feats
        # timm's eval transform of the image the reference was made from, PIL-exact.
        image = next(DATA.glob(f"{stem}.*"))
        np.testing.assert_allclose(m.transform(image), x[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(m.transform(str(image)), x[0], rtol=0, atol=1e-6)


def test_data_config_and_pretrained_cfg():
    m = wstream.create_model(FIXTURES / "vit_tiny")
    assert m.data_config == {
        "input_size": (3, 32, 32),
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 0.9,
        "crop_mode": "center",
    }
    assert m.pretrained_cfg["tag"] == "augreg_in21k_ft_in1k"
    assert m.name == "vit_tiny_patch16_224" and m.num_classes == 1000 and not m.synthetic


def test_pil_image_is_timms_convert_rgb():
    Image = pytest.importorskip("PIL.Image")
    m = wstream.create_model(FIXTURES / "vit_tiny")
    for image in ["cat.jpg", "cat_rgba.png", "cat_grey.png"]:
        ref = np.load(FIXTURES / "vit_tiny" / "reference" / f"{Path(image).stem}.input.npy").reshape(3, 32, 32)
        with Image.open(DATA / image) as img:
            np.testing.assert_allclose(m.transform(img), ref, rtol=0, atol=1e-6, err_msg=image)


def test_arrays_in_every_layout():
    m = wstream.create_model(FIXTURES / "convnext_tiny", threads=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 64, 64), dtype=np.float32)
    want = m(x)
    # Alone or in a batch: the same image (the GEMM's blocking differs with the batch, in the last bits).
    np.testing.assert_allclose(m(x[1:2]), want[1:2], rtol=0, atol=1e-5)
    # Non-contiguous: copied in logical order, same answer as the contiguous copy.
    flipped = x[:, :, ::-1, :]
    assert not flipped.flags.c_contiguous
    np.testing.assert_array_equal(m(flipped), m(np.ascontiguousarray(flipped)))
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(m(nhwc), want)
    # The buffer protocol and __array__.
    np.testing.assert_array_equal(m(memoryview(x)), want)

    class Wrapped:
        def __array__(self, dtype=None, copy=None):
            return x

    np.testing.assert_array_equal(m(Wrapped()), want)
    # Features and a list of images through an ensemble of one.
    assert m.forward_features(x).shape == (3, 32)


@pytest.mark.parametrize(
    "x, says",
    [
        (np.zeros((1, 3, 64, 64), np.float64), "dtype float64, expected float32"),
        (np.zeros((1, 3, 64, 64), np.float16), "dtype float16, expected float32"),
        (np.zeros((3, 64, 64), np.float32), "shape [3, 64, 64], expected [N, 3, H, W]"),
        (np.zeros((1, 1, 64, 64), np.float32), "shape [1, 1, 64, 64], expected [N, 3, H, W]"),
        (np.zeros((0, 3, 64, 64), np.float32), "holds no image"),
        (np.zeros((2, 3, 32, 32), np.float32), "x[0]: input is [3, 32, 32] but convnext_tiny expects [3, 64, 64]"),
        ("not an array", "dtype <U12, expected float32"),
    ],
)
def test_bad_inputs_raise_input_error(x, says):
    m = wstream.create_model(FIXTURES / "convnext_tiny")
    with pytest.raises(wstream.InputError) as e:
        m(x)
    assert says in str(e.value)
    assert isinstance(e.value, wstream.Error)


def write_safetensors(path: Path, tensors: dict) -> None:
    header, data = {}, b""
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_errors_are_the_clis_messages(tmp_path, cli):
    def same_as_cli(exc, model, *extra):
        with pytest.raises(exc) as e:
            wstream.create_model(model, **dict(extra))
        out = run_cli(cli, "classify", "--model", model, DATA / "cat.jpg")
        assert out.returncode != 0
        assert f"wstream: error: {e.value}" in out.stderr, (str(e.value), out.stderr)
        return str(e.value)

    assert same_as_cli(wstream.FileError, tmp_path / "nope").endswith("no such file or folder")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert "file is empty" in same_as_cli(wstream.FileError, tmp_path / "empty.safetensors")
    write_safetensors(tmp_path / "odd.safetensors", {"w": np.zeros((2, 2))})
    assert "match no known family" in same_as_cli(wstream.ModelError, tmp_path / "odd.safetensors")
    with pytest.raises(wstream.FileError, match="not in the Hugging Face cache"):
        wstream.create_model("timm/no_such_model_here")
    with pytest.raises(wstream.BudgetError, match="budget of 1000 bytes is below"):
        wstream.create_model(FIXTURES / "vit_tiny", budget=1000)
    with pytest.raises(wstream.BudgetError, match="over the memory limit of 1000 bytes"):
        wstream.create_model(FIXTURES / "vit_tiny", memory=1000)
    with pytest.raises(wstream.InputError, match="evict `all` is not one of rss, cache"):
        wstream.create_model(FIXTURES / "vit_tiny", evict="all")
    with pytest.raises(wstream.InputError, match="threads must be at least 1"):
        wstream.create_model(FIXTURES / "vit_tiny", threads=0)
    m = wstream.create_model(FIXTURES / "vit_tiny")
    with pytest.raises(wstream.FileError, match="no such file or folder"):
        m.transform(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(wstream.InputError):
        m.transform(tmp_path / "bad.jpg")
    with pytest.raises(TypeError, match="expected a path or a PIL image"):
        m.transform(42)
    with pytest.raises(wstream.InputError, match="pre_logits=True"):
        m.forward_head(np.zeros((1, 32), np.float32))
    assert issubclass(wstream.BudgetError, wstream.Error) and issubclass(wstream.Error, Exception)


def test_hub_ids_resolve_through_the_local_cache(tmp_path, monkeypatch):
    # huggingface_hub's layout: blobs named by content, snapshots/HASH/ symlinks to them, refs naming HASH.
    repo = tmp_path / "hub" / "models--timm--convnext_tiny.test"
    snap = repo / "snapshots" / ("ab" * 20)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("ab" * 20)
    for f in ["model.safetensors", "config.json"]:
        (repo / "blobs" / f).write_bytes((FIXTURES / "convnext_tiny" / f).read_bytes())
        (snap / f).symlink_to(Path("../../blobs") / f)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    x = np.load(FIXTURES / "convnext_tiny" / "reference" / "cat.input.npy")
    x = x.reshape(1, *x.shape[-3:])
    want = wstream.create_model(FIXTURES / "convnext_tiny", threads=2)(x)
    for spelling in ["timm/convnext_tiny.test", "hf-hub:timm/convnext_tiny.test", "convnext_tiny.test@main"]:
        m = wstream.create_model(spelling, threads=2)
        np.testing.assert_array_equal(m(x), want, err_msg=spelling)
    with pytest.raises(wstream.FileError, match="hf download timm/convnext_tiny.other"):
        wstream.create_model("timm/convnext_tiny.other")


def test_ensemble_is_mean_prob_of_its_models():
    a = wstream.create_model(FIXTURES / "vit_tiny", threads=2)
    b = wstream.create_model(FIXTURES / "vit_tiny", use_test_size=True)
    ens = wstream.Ensemble([a, b])
    assert ens.names == ["vit_tiny_patch16_224", "vit_tiny_patch16_224[2]"]
    images = [DATA / "cat.jpg", str(DATA / "coffee.png")]
    r = ens(images, profile=True)
    x = np.stack([a.transform(i) for i in images])
    for logits in r.logits:
        np.testing.assert_array_equal(logits, a(x))
    p = np.exp(r.logits[0] - r.logits[0].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(r.probs, p, rtol=1e-6, atol=1e-7)
    assert [x["input"] for x in r.answers] == [str(i) for i in images]
    assert r.answers[0]["ensemble"]["top"][0]["class"] == int(r.probs[0].argmax())
    assert len(r.profile) == 2 * 4 and {x["model"] for x in r.profile.rows()} == set(ens.names)
    np.testing.assert_array_equal(ens(x).logits[1], r.logits[1])
    with pytest.raises(wstream.InputError, match="at least one model"):
        wstream.Ensemble([])
    with pytest.raises(wstream.InputError, match="combine `max`"):
        wstream.Ensemble([a], combine="max")


def test_profile_records():
    m = wstream.create_model(FIXTURES / "swin_tiny")
    x = np.load(FIXTURES / "swin_tiny" / "reference" / "cat.input.npy").reshape(1, 3, 64, 64)
    logits, prof = m(x, profile=True)
    np.testing.assert_array_equal(logits, m(x))
    blocks = json.loads((FIXTURES / "swin_tiny" / "reference" / "blocks.json").read_text())["blocks"]
    assert [r["block"] for r in prof.records] == blocks
    row = prof.rows()[0]
    for key in ["model", "block", "weight_bytes", "compute_ms", "wait_ms", "compute_faults_major",
                "prefetch_faults_minor", "mem_after_bytes_vm_rss", "released_bytes_unmapped"]:
        assert key in row, key
    assert all(not isinstance(v, dict) for v in row.values())
    assert sum(r["weight_bytes"] for r in prof.records) > 0
    # A profile takes the readings (plain calls skip them).
    assert all(r["mem_after_bytes_vm_rss"] > 0 for r in prof.rows())
    assert "peak RSS (VmHWM)" in str(prof) and "blocks.0" not in prof.records[0]["block"]
    _, feats_prof = m.forward_features(x, profile=True)
    assert feats_prof.records[-1]["block"] == "head"


def test_a_second_thread_runs_while_inference_holds_no_gil():
    m = wstream.create_model(FIXTURES / "convnext_tiny", threads=1)
    # A batch long enough to tell, however fast this machine is: doubled until the call takes 0.3 s.
    n = 400
    while True:
        x = np.zeros((n, 3, 64, 64), np.float32)
        ticks = []
        done = threading.Event()

        def count():
            while not done.is_set():
                ticks.append(time.perf_counter())

        t = threading.Thread(target=count)
        start = time.perf_counter()
        t.start()
        try:
            m(x)
        finally:
            end = time.perf_counter()
            done.set()
            t.join()
        if end - start > 0.3 or n >= 12800:
            break
        n *= 2
    during = [s for s in ticks if start + 0.05 < s < end - 0.05]
    assert end - start > 0.3, "the call is long enough to tell"
    # With the GIL held by the call, the counting thread would not run at all until it returned.
    assert len(during) > 1000, (len(during), end - start)


def test_ctrl_c_raises_keyboard_interrupt_within_a_block(large_dir):
    # ConvNeXt-L: an image takes 0.2-1 s (quiet or loaded box), its longest block a few tens of milliseconds
    # per image. The batch is sized from the measured image so the call lasts about 4 s on any box.
    script = textwrap.dedent(
        f"""
        import os, signal, sys, threading, time
        import numpy as np, wstream
        m = wstream.create_model({str(large_dir / 'convnext_large')!r}, threads=2)
        x = np.zeros((1, 3, 224, 224), np.float32)
        t0 = time.perf_counter(); m(x); per = time.perf_counter() - t0
        n = max(8, int(4.0 / per) + 1)
        big = np.zeros((n, 3, 224, 224), np.float32)
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.perf_counter()
        try:
            m(big)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted", time.perf_counter() - t0, per * n, flush=True)
        print("after", m(x).shape, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].startswith("interrupted"), out.stdout
    _, took, whole = lines[0].split()
    assert float(whole) > 2.0, f"a call long enough to interrupt: {out.stdout}"
    assert float(took) < 0.5 + 1.0, f"KeyboardInterrupt within a block: {out.stdout}"
    assert lines[1] == "after (1, 1000)", out.stdout


def test_the_three_large_models_under_a_512_mib_cgroup(large_dir):
    script = textwrap.dedent(
        f"""
        import numpy as np, wstream, json
        models = [wstream.create_model({str(large_dir)!r} + "/" + a, threads=2) for a in {LARGE!r}]
        image = {str(DATA / 'cat.jpg')!r}
        alone = [m(m.transform(image)[None]) for m in models]
        r = wstream.Ensemble(models)([image])
        for a, b in zip(alone, r.logits):
            np.testing.assert_array_equal(a[0], b[0])
        print(json.dumps({{"peak": wstream.peak_rss(), "top": r.answers[0]["ensemble"]["top"][0]["class"]}}))
        """
    )
    out = subprocess.run(membox() + ["512M", sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600)
    if out.returncode == 3:
        skip_or_fail(f"membox: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    assert "oom-killed: no" in out.stderr, out.stderr
    peak = json.loads(out.stdout.strip().split("\n")[-1])["peak"]
    assert peak < 448 << 20, f"peak RSS {peak >> 20} MiB"
    print(out.stderr.strip(), f"python peak RSS {peak >> 20} MiB", file=sys.stderr)
