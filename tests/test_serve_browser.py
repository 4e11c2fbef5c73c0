"""The page of `siglip serve` in real headless Chromium (Debian's `chromium`, driven by Playwright): search by
text and by image, thumbnails that load, the full image, classification bars, errors, a phone-width window.

Screenshots go to $SIGLIP_SCREENSHOTS when set (README's picture is made so), else to the test's tmp folder.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from _material import BUNDLED, write_photos
from _serving import start_server
from siglip import Embedder, SearchIndex, pipeline

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright: see .ci/run")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="the browser test needs Debian's chromium: see .ci/run"
)
LABELS = ["a cat", "a rocket", "a cup of coffee"]
ALL_LOADED = "s => [...document.querySelectorAll(s)].every(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, index, photos) of a server over an index of the scikit-image photos."""
    root = tmp_path_factory.mktemp("browser")
    files = write_photos(root / "photos", corrupt=False)
    embedder = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")
    index = SearchIndex(root / "index", embedder)
    index.update([root / "photos"], workers=0, progress=False)
    process, url = start_server(root / "index")
    yield url, index, files
    process.terminate()
    process.wait(30)
    index.close()


@pytest.fixture(scope="module")
def page(served):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(served[0])
        yield page
        browser.close()
        expected = {  # the refusals the tests ask for: a file that is no image, a filter that does not parse
            "Failed to load resource: the server responded with a status of 415 (Unsupported Media Type)",
            "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)",
        }
        assert [e for e in errors if e not in expected] == []  # no script errors, no CSP violations, no 404s


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    directory = Path(os.environ.get("SIGLIP_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _names(page) -> list[str]:
    return page.eval_on_selector_all("#results img", "imgs => imgs.map(i => i.alt)")


def test_search_by_text_shows_loaded_thumbnails_in_the_index_order(page, served, shots):
    _, index, files = served
    sync_api.expect(page.locator("#about")).to_have_text(f"Model {BUNDLED} · {len(files)} images indexed")
    page.get_by_label("Describe what you are looking for").fill("a cat on a sofa")
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#results img")).to_have_count(len(files))
    page.wait_for_function(ALL_LOADED, arg="#results img")
    assert _names(page) == [Path(h.path).name for h in index.search_text("a cat on a sofa", k=24)]
    sync_api.expect(page.locator("#search-message")).to_contain_text("5 results for “a cat on a sofa”")
    page.screenshot(path=shots / "serve-search.png", full_page=True)

    page.locator("#results button.thumb").first.click()  # the full image, in a dialog
    page.wait_for_function(ALL_LOADED, arg="#viewer-image")
    assert (
        page.eval_on_selector("#viewer-image", "i => i.naturalWidth") > 256
    )  # the original, not a thumbnail
    page.keyboard.press("Escape")
    sync_api.expect(page.locator("#viewer")).not_to_be_visible()


def test_search_by_an_uploaded_image_and_by_similar(page, served, shots):
    _, index, files = served
    rocket = next(f for f in files if f.name == "rocket.jpg")
    page.set_input_files("#search-file", str(rocket))
    sync_api.expect(page.locator("#search-message")).to_contain_text(f"5 results like {rocket.name}")
    page.wait_for_function(ALL_LOADED, arg="#results img")
    assert _names(page) == [Path(h.path).name for h in index.search_image(str(rocket), k=24)]
    assert _names(page)[0] == rocket.name
    page.screenshot(path=shots / "serve-search-by-image.png", full_page=True)

    page.get_by_role("button", name="Similar images").nth(2).click()
    third = index.search_image(str(rocket), k=24)[2]
    sync_api.expect(page.locator("#search-message")).to_contain_text(
        f"5 results like {Path(third.path).name}"
    )
    assert _names(page) == [Path(h.path).name for h in index.search(index.entry(third.id)[1], k=24)[0]]


def _drop_to_classify(page, image: Path) -> None:
    """Drop `image` on the classify panel, as a user drags a file there."""
    data = base64.b64encode(image.read_bytes()).decode("ascii")
    transfer = page.evaluate_handle(
        """b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const dt = new DataTransfer(); dt.items.add(new File([bytes], "cat.jpg", {type: "image/jpeg"}));
                    return dt; }""",
        data,
    )
    page.dispatch_event("#classify-drop", "drop", {"dataTransfer": transfer})
    sync_api.expect(page.locator("#classify-preview")).to_be_visible()


def test_classify_a_dropped_image_shows_the_pipeline_probabilities_as_bars(page, served, shots):
    _, index, files = served
    cat = next(f for f in files if f.name == "chelsea.jpg")
    _drop_to_classify(page, cat)
    page.fill("#labels", ", ".join(LABELS))
    page.get_by_role("button", name="Classify").click()
    sync_api.expect(page.locator("#bars li")).to_have_count(len(LABELS))

    expected = pipeline(model=index.embedder)(str(cat), candidate_labels=LABELS)
    shown = page.eval_on_selector_all(
        "#bars .bar",
        "bars => bars.map(b => [b.getAttribute('aria-label'), +b.getAttribute('aria-valuenow')])",
    )
    assert [label for label, _ in shown] == [r["label"] for r in expected]
    assert [score for _, score in shown] == pytest.approx([r["score"] for r in expected], rel=1e-4)
    widths = page.eval_on_selector_all("#bars .bar", "bars => bars.map(b => b.getBoundingClientRect().width)")
    track = page.eval_on_selector("#bars .track", "t => t.getBoundingClientRect().width")
    assert widths == pytest.approx([max(2, track * r["score"]) for r in expected], abs=1.5)
    page.locator("#classify-form").scroll_into_view_if_needed()
    page.screenshot(path=shots / "serve-classify.png", full_page=True)


def test_errors_are_shown_as_text_and_the_page_fits_a_phone(page, served, shots, tmp_path):
    # the text search's answer is held back until after the upload's: the later search's answer is the one
    # shown, even when the earlier one's comes back after it
    held = []

    def hold_text_searches(route) -> None:
        if "application/json" in (route.request.headers.get("content-type") or ""):
            held.append(route)
        else:
            route.continue_()

    page.route("**/v1/search", hold_text_searches)
    page.fill("#search-text", "<img src=x onerror=alert(1)>")
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#search-message")).to_contain_text("for “<img src=x onerror=alert(1)>”")
    assert page.locator("#search-message img").count() == 0  # shown as text, never as markup

    fake = tmp_path / "photo.jpg"
    fake.write_text("not an image at all")
    page.set_input_files("#search-file", str(fake))
    message = page.locator("#search-message.error")
    sync_api.expect(message).to_contain_text("upload 'photo.jpg' is not an image")
    (text_search,) = held
    with page.expect_response("**/v1/search"):
        text_search.continue_()
    page.unroute("**/v1/search")
    page.wait_for_timeout(300)  # the page's handling of that late answer
    sync_api.expect(message).to_contain_text("upload 'photo.jpg' is not an image")
    sync_api.expect(page.locator("#results li")).to_have_count(0)
    _drop_to_classify(page, served[2][0])  # its own image: tests may run in any order
    page.fill("#labels", " , ")
    page.get_by_role("button", name="Classify").click()
    sync_api.expect(page.locator("#classify-message.error")).to_have_text("Type at least one label.")

    page.set_viewport_size({"width": 375, "height": 800})
    page.fill("#search-text", "a rocket")
    page.keyboard.press("Enter")
    page.wait_for_function(ALL_LOADED, arg="#results img")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    page.screenshot(path=shots / "serve-phone.png", full_page=True)


def test_the_filter_box_narrows_a_search_and_results_show_their_date(page, served, shots):
    _, index, files = served
    page.set_viewport_size({"width": 1200, "height": 900})  # after the phone-width test
    where = "orientation = 'landscape' and not path ~ 'coffee'"
    page.fill("#search-where", where)
    page.get_by_label("Describe what you are looking for").fill("a cat")
    page.keyboard.press("Enter")
    expected = index.search_text("a cat", k=24, where=where)
    sync_api.expect(page.locator("#search-message")).to_contain_text(
        f"{len(expected)} results for “a cat” where"
    )
    page.wait_for_function(ALL_LOADED, arg="#results img")
    assert _names(page) == [Path(h.path).name for h in expected] and 0 < len(expected) < len(files)
    date = expected[0].metadata["date"][:16].replace("T", " ")  # the photos have no EXIF: the file's date
    sync_api.expect(page.locator("#results figcaption").first).to_contain_text(f"~{date}")
    page.screenshot(path=shots / "serve-search-filter.png", full_page=True)

    page.fill("#search-where", "colour = 'red'")
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#search-message")).to_contain_text("unknown field 'colour'")
    page.fill("#search-where", "")
