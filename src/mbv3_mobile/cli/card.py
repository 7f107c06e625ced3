"""`mbv3 card FOLDER`: write / refresh MODEL_CARD.md + model_card.json of a published folder."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("card", help="write/refresh MODEL_CARD.md + model_card.json of a published artifact folder")
    p.add_argument("folder", help="a published folder, e.g. dist/android/mobilenet_v3_small_100_64px")
    p.add_argument("--parity", metavar="PATH", help="parity.json (or its report folder) from `nox -s parity`")
    p.add_argument("--bench", metavar="PATH", help="bench.json from `nox -s bench` (host latency, sizes, RSS)")
    p.add_argument("--harness", metavar="PATH", action="append", default=[],
                   help="harness results.json (host/adb/ios); repeatable")
    p.set_defaults(func=run)


def run(args) -> int:
    from mbv3_mobile.card import CARD_JSON, CARD_MD, write_card

    card = write_card(args.folder, parity=args.parity, bench=args.bench, harness=args.harness)
    lat = card["latency"]
    print(f"[card] wrote {Path(args.folder) / CARD_MD} and {CARD_JSON}: {len(card['accuracy'])} accuracy rows, "
          f"parity {'yes' if card['parity'] else 'not run'}, host latency {lat['host']['status']}, "
          f"device latency {lat['devices']['status']}")
    return 0
