"""``python -m yolo_plugins ...`` = the ``yolo-plugins`` command."""

from .tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
