"""The pre-resize tool: shorter side, layout, resumability, atomic writes, errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from training.resize import main


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """train/ and validation/ with large wide, large tall, and small images; returns their sizes."""
    sizes = {"train/a/wide.JPEG": (400, 300), "train/a/tall.JPEG": (250, 500),
             "train/b/small.JPEG": (120, 90), "validation/a/v.JPEG": (330, 220),
             "validation/b/v.png": (300, 600)}
    for rel, wh in sizes.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", wh, (40, 90, 200)).save(root / rel)
    return sizes


def test_shorter_side_aspect_layout_and_small_images_copied(tmp_path, capsys):
    sizes = _tree(tmp_path / "data")
    assert main([str(tmp_path / "data"), str(tmp_path / "out"), "--size", "160", "--workers", "2"]) == 0
    assert "5 written, 0 already done, 0 unreadable" in capsys.readouterr().out
    expected = {"train/a/wide.JPEG": (213, 160), "train/a/tall.JPEG": (160, 320),
                "validation/a/v.JPEG": (240, 160), "validation/b/v.png": (160, 320)}
    for rel, wh in expected.items():
        with Image.open(tmp_path / "out" / rel) as im:
            assert im.size == wh and im.format == ("PNG" if rel.endswith(".png") else "JPEG")
    # never upscaled: a smaller image is copied byte for byte
    assert (tmp_path / "out/train/b/small.JPEG").read_bytes() == (tmp_path / "data/train/b/small.JPEG").read_bytes()
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()) \
        == sorted([*sizes, ".resize.json"])  # and the settings it was made with, hidden from the loaders


def test_exact_size_copied_long_side_rounded_and_quality_applied(tmp_path):
    """Known answers at the rule's edges: a shorter side exactly at --size is copied byte for byte (a
    re-encode would only lose quality); 301 x 200 at 160 is 241 x 160 (240.8 rounded, not floored);
    re-encoded JPEGs are written at --quality (a noisy image: smaller at 30 than at 95)."""
    import numpy as np
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    files = {"train/a/exact.JPEG": Image.fromarray(noise[:160, :240]), "train/a/odd.JPEG": Image.new("RGB", (301, 200)),
             "train/a/noise.JPEG": Image.fromarray(noise)}
    for rel, im in files.items():
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(tmp_path / "data" / rel)
    for q in (30, 95):
        assert main([str(tmp_path / "data"), str(tmp_path / f"q{q}"), "--size", "160", "--workers", "1",
                     "--quality", str(q)]) == 0
    assert (tmp_path / "q95/train/a/exact.JPEG").read_bytes() == (tmp_path / "data/train/a/exact.JPEG").read_bytes()
    with Image.open(tmp_path / "q95/train/a/odd.JPEG") as im:
        assert im.size == (241, 160)
    assert (tmp_path / "q30/train/a/noise.JPEG").stat().st_size < (tmp_path / "q95/train/a/noise.JPEG").stat().st_size


def test_resumable_skips_done_files_and_redoes_partial_ones(tmp_path, capsys):
    _tree(tmp_path / "data")
    args = [str(tmp_path / "data"), str(tmp_path / "out"), "--size", "160", "--workers", "1"]
    assert main(args) == 0
    done = tmp_path / "out/train/a/wide.JPEG"
    os.utime(done, (1, 1))
    # a run killed mid-write left a partial temp file and no final file
    victim = tmp_path / "out/validation/a/v.JPEG"
    partial = victim.parent / ".v.JPEG.part"
    victim.unlink()
    partial.write_bytes(b"\xff\xd8 half a jpeg")
    capsys.readouterr()
    assert main(args) == 0
    assert "1 written, 4 already done" in capsys.readouterr().out
    assert done.stat().st_mtime == 1  # not rewritten
    assert not partial.exists()
    with Image.open(victim) as im:
        assert im.size == (240, 160)


def test_another_size_into_the_same_output_is_refused(tmp_path, capsys):
    """Its finished files would be skipped as done and stay at the first size."""
    _tree(tmp_path / "data")
    out = tmp_path / "out"
    assert main([str(tmp_path / "data"), str(out), "--size", "160", "--workers", "1"]) == 0
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.*"))
    capsys.readouterr()
    assert main([str(tmp_path / "data"), str(out), "--size", "352", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"resize: {out} holds images made with --size 160 --quality 90 ({out}/.resize.json); "
                   "give another output dir, or remove it\n")
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.*")) == before  # nothing touched
    assert main([str(tmp_path / "data"), str(out), "--size", "160", "--workers", "1"]) == 0  # the same: resumes
    assert "0 written, 5 already done" in capsys.readouterr().out


def test_a_marker_nested_past_the_parsers_depth_is_a_corrupt_one(tmp_path, capsys):
    """As any corrupt marker: the output is taken as new and its marker rewritten, no traceback."""
    _tree(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".resize.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main([str(tmp_path / "data"), str(out), "--size", "160", "--workers", "1"]) == 0
    assert json.loads((out / ".resize.json").read_text()) == {"size": 160, "quality": 90}


def test_unreadable_input_named_and_skipped(tmp_path, capsys):
    _tree(tmp_path / "data")
    (tmp_path / "data/train/a/broken.JPEG").write_bytes(b"not a jpeg")
    assert main([str(tmp_path / "data"), str(tmp_path / "out"), "--workers", "1"]) == 0
    out = capsys.readouterr()
    assert "1 unreadable" in out.out and "broken.JPEG" in out.err
    assert not (tmp_path / "out/train/a/broken.JPEG").exists()
    assert not list((tmp_path / "out").rglob("*.part"))


def test_an_input_failing_mid_decode_leaves_no_part_file(tmp_path, capsys):
    """A JPEG cut short past its header opens, then fails in the decode: it is named and skipped, and
    no .part stays beside the output, not even one a killed earlier run left for it."""
    _tree(tmp_path / "data")
    whole = Image.new("RGB", (400, 300), (40, 90, 200))
    whole.save(tmp_path / "data/train/a/cut.JPEG")
    data = (tmp_path / "data/train/a/cut.JPEG").read_bytes()
    (tmp_path / "data/train/a/cut.JPEG").write_bytes(data[:len(data) // 2])
    stale = tmp_path / "out/train/a/.cut.JPEG.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\xff\xd8 half a jpeg")  # the killed run's
    assert main([str(tmp_path / "data"), str(tmp_path / "out"), "--size", "160", "--workers", "1"]) == 0
    out = capsys.readouterr()
    assert "1 unreadable" in out.out and "cut.JPEG" in out.err
    assert not list((tmp_path / "out").rglob("*.part"))


def test_a_cmyk_jpeg_is_written_as_rgb_with_its_colours(tmp_path):
    """A CMYK JPEG (ImageNet's train split holds a few) is re-encoded as an RGB JPEG, the loaders'
    mode (and 3 channels to decode, not 4), its colour kept up to JPEG noise."""
    src = tmp_path / "data/train/a/cmyk.JPEG"
    src.parent.mkdir(parents=True)
    Image.new("RGB", (400, 300), (200, 60, 30)).convert("CMYK").save(src, quality=95)
    with Image.open(src) as im:
        assert im.mode == "CMYK"
    assert main([str(tmp_path / "data"), str(tmp_path / "out"), "--size", "160", "--workers", "1"]) == 0
    with Image.open(tmp_path / "out/train/a/cmyk.JPEG") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (213, 160))
        r, g, b = im.getpixel((106, 80))
    assert abs(r - 200) <= 3 and abs(g - 60) <= 3 and abs(b - 30) <= 3


def _xpm(path: Path, w: int, h: int) -> None:
    """A two-colour XPM: a format Pillow reads but cannot write."""
    rows = [f'"{w} {h} 2 1",', '". c #000000",', '"# c #FFFFFF",']
    rows += ['"' + "".join(".#"[(x // 8 + y // 8) % 2] for x in range(w)) + '",' for y in range(h)]
    path.write_text("/* XPM */\nstatic char *img[] = {\n" + "\n".join(rows).rstrip(",") + "\n};\n")


def test_format_pillow_cannot_write_named_and_skipped(tmp_path, capsys):
    """Files keep their format, so a large XPM cannot be resized: one line names it and the run goes
    on (Image.save's KeyError used to end it with a traceback, losing the rest of the worker's chunk)."""
    sizes = _tree(tmp_path / "data")
    xpm = tmp_path / "data/train/a/icon.xpm"
    _xpm(xpm, 300, 200)
    _xpm(tmp_path / "data/train/b/tiny.xpm", 40, 30)  # not resized: copied as is
    assert main([str(tmp_path / "data"), str(tmp_path / "out"), "--size", "160", "--workers", "1"]) == 0
    out = capsys.readouterr()
    assert out.err == f"resize: skipping {xpm}: Pillow cannot write XPM files\n"
    assert "6 written, 0 already done, 1 unreadable" in out.out
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == sorted([*sizes, "train/b/tiny.xpm", ".resize.json"])


def test_missing_data_exits_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
