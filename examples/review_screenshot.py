"""Take a screenshot of the `hpa review` page in headless Chromium (the README's picture).

    python examples/review_screenshot.py --store hpa-demo/hpa.zarr --run oof --selection mitotic \
        --keys aarj --out docs/review.png

The store is copied to a temporary folder first, so the decisions typed here (``--keys``:
a accept, r reject, s skip, ...) never reach your store. Needs Chromium from the OS
packages (or HPA_CHROMIUM); run from the repository root.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpacli.review import open_session, serving  # noqa: E402
from hpacli.store import open_store  # noqa: E402
from tests.browser import Chromium, find_chromium  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("hpa-demo/hpa.zarr"))
    ap.add_argument("--run", default="oof")
    ap.add_argument("--selection", default="mitotic")
    ap.add_argument("--keys", default="aarj", help="keys typed before the screenshot")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--out", type=Path, default=Path("docs/review.png"))
    args = ap.parse_args()
    exe = find_chromium()
    if exe is None:
        sys.exit("no Chromium found: apt-get install chromium (or set HPA_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="hpa-review-shot-") as tmp:
        copy = Path(tmp) / "hpa.zarr"
        shutil.copytree(args.store, copy, ignore=shutil.ignore_patterns(".hpa*.lock"))
        session = open_session(open_store(copy, "a"), args.run, args.selection, reviewer="screenshot")
        with serving(session) as server, Chromium(exe, args.width, args.height) as browser:
            page = browser.new_page()
            page.goto(server.url)
            for key in args.keys:
                page.press(key)
            page.wait_for("hpaReview.pending() === 0")
            page.wait_for("[...document.querySelectorAll('#panels img, #whole, #nbs img')]"
                          ".every(i => i.complete && i.naturalWidth > 0)")
            page.wait_for("[...document.querySelectorAll('#list img')].slice(0, 12)"
                          ".every(i => i.complete && i.naturalWidth > 0)")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(args.out)
    from PIL import Image

    # 256 colours keep the picture small enough for the repository (~100 KB instead of ~300)
    Image.open(args.out).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
