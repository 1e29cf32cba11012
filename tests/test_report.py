"""The top-k report and the demo's index page: escaping, contents, and a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from convscope.analyses.topk import run_topk
from convscope.demo import Figure, Section, Table
from convscope.render.report import write_demo_index, write_topk_report
from tests.test_topk_data import SMALL, photo_collection, seeded_zfnet

CHROMIUM = "/usr/bin/chromium"
EVIL = '<img src=x onerror="window.pwned=1">&'


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run whose image names and class folders hold HTML."""
    root = tmp_path_factory.mktemp("report")
    data = photo_collection(root / "data", per_photo=2, extras=False)
    evil_class = data / f"{EVIL}class"
    evil_class.mkdir()
    for i, f in enumerate(sorted((data / "chelsea").glob("*.jpg"))):
        shutil.copy(f, evil_class / f"{EVIL}{i}.jpg")
    out = root / "run"
    run_topk(
        seeded_zfnet(3), data, "conv1,conv2", k=9, out=out, model_spec="zfnet",
        batch_size=8, tile=24, preprocess=SMALL,
    )  # fmt: skip
    return out


def test_topk_report_escapes_names_and_is_self_contained(run_dir: Path) -> None:
    page = (run_dir / "report" / "index.html").read_text()
    assert EVIL not in page and "<img src=x" not in page
    assert "\\u003cimg src=x onerror" in page  # travels as escaped JSON
    # no network: no http(s) URLs in src/href, CSS and JS inline
    assert not re.search(r"""(src|href)=["']?https?:""", page)
    assert "<script src" not in page and "<link" not in page
    data = json.loads(re.search(r'id="topk-data"[^>]*>(.*?)</script>', page, re.S).group(1))
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2"]
    assert any(n.startswith(f"{EVIL}class/") for n in data["names"])
    assert len(data["layers"][1]["imgs"]) == 256 * 9


def test_demo_index_renders_every_section(tmp_path: Path) -> None:
    stage = tmp_path / "alpha"
    stage.mkdir()
    Image.new("RGB", (8, 8)).save(stage / "pic.png")
    (stage / "t.csv").write_text("layer,value\n<b>conv1</b>,1.5\nconv2,2\n")
    Section(
        f"Alpha {EVIL}",
        summary=[f"line {EVIL}"],
        figures=[Figure("alpha/pic.png", f"cap {EVIL}")],
        tables=[Table("numbers", "alpha/t.csv")],
        links=[Figure("beta/report/index.html", "the top-9 browser")],
    ).save(stage / "section.json")
    (tmp_path / "beta").mkdir()
    Section("Beta", summary=["broke"], failed=True).save(tmp_path / "beta" / "section.json")
    (tmp_path / "report").mkdir()
    Section("HTML report").save(tmp_path / "report" / "section.json")
    page = write_demo_index(tmp_path).read_text()
    assert EVIL not in page and "<b>conv1</b>" not in page
    assert "&lt;b&gt;conv1&lt;/b&gt;" in page and "<td>1.5</td>" in page
    assert 'src="alpha/pic.png"' in page and 'href="beta/report/index.html"' in page
    assert 'class="stage failed"' in page and page.count("<section") == 3  # contents + 2
    Section("Bad", links=[Figure("javascript:alert(1)", "x")]).save(stage / "section.json")
    with pytest.raises(Exception, match="only relative paths"):
        write_demo_index(tmp_path)


@pytest.mark.slow
def test_demo_topk_stage_and_index(tmp_path: Path) -> None:
    from convscope.demo import DemoContext, run_demo

    sections = run_demo(DemoContext(tmp_path, quick=True), ["topk", "report"], lambda s: None)
    assert [s.failed for s in sections] == [False, False], [s.summary for s in sections]
    page = (tmp_path / "index.html").read_text()
    assert 'href="topk/run/report/index.html"' in page
    assert (tmp_path / "topk" / "run" / "report" / "index.html").is_file()
    assert "<table" in page and "stem" in page
    for fig in sections[0].figures:
        assert (tmp_path / fig.path).is_file()


@pytest.mark.browser
def test_browser_clicks_from_layer_to_map_and_sees_nine_and_nine(run_dir: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (tools/ensure_chromium.py installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    write_topk_report(run_dir)
    url = (run_dir / "report" / "index.html").resolve().as_uri()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.click(".layer-link[data-layer='1']")
            page.wait_for_selector(".map-thumb")
            assert page.locator(".map-thumb").count() == 256
            page.click(".map-thumb[data-map='7']")
            page.wait_for_selector(".proj-tile img")
            page.wait_for_function(
                "[...document.querySelectorAll('.tile img')].every(i => i.complete)"
            )
            for cls in ("proj-tile", "patch-tile"):
                tiles = page.locator(f".{cls}")
                assert tiles.count() == 9
                for i in range(9):
                    assert tiles.nth(i).is_visible()
                    box = tiles.nth(i).bounding_box()
                    assert box and box["width"] > 50 and box["height"] > 50
            loaded = page.evaluate(
                "[...document.querySelectorAll('.tile img')].map(i => i.naturalWidth)"
            )
            assert len(loaded) == 18 and all(w > 0 for w in loaded)
            assert "conv2" in page.inner_text(".map-title") and "7" in page.inner_text(".map-title")
            assert page.locator(".entry").count() == 9
            # names with HTML in them show as text, never as elements
            page.goto(url + "#l=0&m=0")
            page.wait_for_selector(".entry")
            page.evaluate("window.pwned = window.pwned || 0")
            texts = " ".join(page.locator(".entry").all_inner_texts())
            for c in range(1, 96):
                if EVIL in texts:
                    break
                page.keyboard.press("ArrowRight")  # keyboard navigation, map by map
                page.wait_for_function(f"location.hash.endsWith('m={c}')")
                texts = " ".join(page.locator(".entry").all_inner_texts())
            assert EVIL in texts, "no map of conv1 shows an image with HTML in its name"
            assert page.evaluate("window.pwned") == 0
            page.keyboard.press("Escape")
            page.wait_for_selector(".map-thumb")
            assert errors == []
        finally:
            browser.close()
