"""Patch an unpacked Horovod 0.28.1 sdist to build as C++17.

Horovod's CMake files pin C++14, but the headers of torch >= 2.1 need C++17.
Every rewrite must find the exact text it replaces; if the sdist changed, this
fails loudly instead of producing a build that breaks later in obscure ways.
Usage: python scripts/patch_horovod.py HOROVOD_SRC_DIR
"""
import pathlib
import sys

# (file relative to the sdist root, text expected, replacement)
REWRITES = [
    ("CMakeLists.txt",
     "set(CMAKE_CXX_STANDARD 14)\n",
     "set(CMAKE_CXX_STANDARD 17)\n"),
    ("horovod/torch/CMakeLists.txt",
     "    set(CMAKE_CXX_STANDARD 14)\n",
     "    set(CMAKE_CXX_STANDARD 17)\n"),
]


def patch(root):
    root = pathlib.Path(root)
    for rel, old, new in REWRITES:
        path = root / rel
        if not path.is_file():
            sys.exit(f"patch_horovod: {path} does not exist (not a Horovod 0.28.1 sdist?)")
        text = path.read_text()
        if new in text and old not in text:
            print(f"patch_horovod: {rel} already patched")
            continue
        if text.count(old) != 1:
            sys.exit(f"patch_horovod: expected exactly one {old.strip()!r} in {path}, "
                     f"found {text.count(old)}; refusing to guess")
        path.write_text(text.replace(old, new))
        print(f"patch_horovod: {rel}: C++14 -> C++17")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/patch_horovod.py HOROVOD_SRC_DIR")
    patch(sys.argv[1])
