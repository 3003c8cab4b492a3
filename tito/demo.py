"""`tito demo`: placeholder, replaced below once the core exists."""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train a small model and report its measured accuracy")
    p.set_defaults(func=run)


def run(args) -> int:
    print("demo: not yet written")
    return 1
