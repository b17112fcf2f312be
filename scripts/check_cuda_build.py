"""Checks a CUDA build of toolkit._C in a process that has no GPU.

    python scripts/check_cuda_build.py [--archs 80,90] [--cuobjdump PATH] [--json FILE]

1. the extension imports and says it was built with CUDA (toolkit._C.with_cuda);
2. every kernel of the backend contract (toolkit/csrc/backend_kernels.inc, the list both
   the CPU and the CUDA backend implement) is registered for the CUDA dispatch key, by
   register_cuda.cpp (the dispatcher records where each kernel was registered), and for CPU;
3. the extension holds device code (SASS) for exactly the requested architectures, when a
   cuobjdump is available (the CUDA toolkit's, else the one torch's Triton ships).

Every op of torch.ops.invariance and torch.ops.dasgd is listed with the dispatch keys that
have a kernel, so ops that run on a GPU only through ATen (composite) or a Python fallback
are visible too. Exit 0 when everything holds, 1 otherwise (a line per failure).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT = os.path.join(REPO, "toolkit", "csrc", "backend_kernels.inc")
NAMESPACES = ("invariance", "dasgd")
KEYS = ("CPU", "CUDA", "CompositeExplicitAutograd", "CompositeImplicitAutograd", "Autograd")


def contract_kernels():
    """Names of the kernels every backend implements (function names declared in the .inc)."""
    with open(CONTRACT) as f:
        text = re.sub(r"//[^\n]*", "", f.read())
    return sorted(set(re.findall(r"(\w+)\s*\(\s*const at::Tensor", text)))


def dispatch_table(torch):
    """{qualified op name: [dispatch keys with a kernel]} for our namespaces."""
    names = [n for n in torch._C._dispatch_get_all_op_names()
             if n.split("::")[0] in NAMESPACES]
    return {n: [k for k in KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(n, k)]
            for n in sorted(names)}


def registered_in(torch, op, key):
    """File that registered op's kernel for `key`, from the dispatcher's own dump."""
    match = re.search(rf"^{key}: registered at (\S+?):\d+", torch._C._dispatch_dump(op), re.M)
    return os.path.basename(match.group(1)) if match else None


def find_cuobjdump(explicit):
    if explicit:
        return explicit
    home = os.environ.get("CUDA_HOME")
    candidates = [os.path.join(home, "bin", "cuobjdump")] if home else []
    candidates.append(shutil.which("cuobjdump"))
    try:
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                       "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def device_archs(cuobjdump, library):
    """({sm numbers with SASS}, {compute numbers with PTX}) embedded in the library."""
    elf = subprocess.run([cuobjdump, "--list-elf", library], capture_output=True, text=True)
    ptx = subprocess.run([cuobjdump, "--list-ptx", library], capture_output=True, text=True)
    if elf.returncode != 0:
        raise RuntimeError(f"{cuobjdump} --list-elf failed: {elf.stderr.strip()}")
    return (set(re.findall(r"\.sm_(\d+)a?\.cubin", elf.stdout)),
            set(re.findall(r"\.sm_(\d+)a?\.ptx", ptx.stdout)))


def check(args):
    failures, report = [], {}
    import torch
    import toolkit._C as ext
    report.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                  gpu_visible=torch.cuda.is_available(), with_cuda=bool(ext.with_cuda),
                  library=os.path.basename(ext.__file__))
    if torch.version.cuda is None:
        failures.append(f"torch {torch.__version__} is a CPU build")
    if not ext.with_cuda:
        failures.append(f"{ext.__file__} was built without CUDA (with_cuda is False)")
    table = dispatch_table(torch)
    report["ops"] = table
    if not table:
        failures.append("no torch.ops.invariance / torch.ops.dasgd ops are registered")
    wanted = contract_kernels()
    report["cuda_kernels_expected"] = wanted
    for name in wanted:
        op = f"invariance::{name}"
        keys = table.get(op, [])
        for key in ("CPU", "CUDA"):
            if key not in keys:
                failures.append(f"{op} has no {key} kernel")
        where = registered_in(torch, op, "CUDA")
        if "CUDA" in keys and where != "register_cuda.cpp":
            failures.append(f"{op}: CUDA kernel registered in {where}, not register_cuda.cpp")
    cuobjdump = find_cuobjdump(args.cuobjdump)
    if cuobjdump is None:
        report["archs"] = "not checked: no cuobjdump"
    else:
        sass, ptx = device_archs(cuobjdump, ext.__file__)
        report["sass"], report["ptx"] = sorted(sass), sorted(ptx)
        expected = set(args.archs.split(","))
        if sass != expected:
            failures.append(f"SASS for sm_{sorted(sass)}, expected sm_{sorted(expected)}")
    return failures, report


def print_report(failures, report):
    print(f"torch {report['torch']} (CUDA {report['torch_cuda']}), GPU visible: "
          f"{report['gpu_visible']}, {report['library']} with_cuda={report['with_cuda']}")
    for op, keys in report.get("ops", {}).items():
        print(f"  {op:40s} {' '.join(keys)}")
    if "sass" in report:
        print(f"device code: SASS sm_{','.join(report['sass'])}; PTX compute_"
              f"{','.join(report['ptx']) or '-'}")
    else:
        print(f"device code: {report.get('archs')}")
    for line in failures:
        print(f"FAIL: {line}")
    print("ok: CUDA build checks hold" if not failures else f"{len(failures)} check(s) failed")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="80,90", help="SM numbers that must have SASS")
    p.add_argument("--cuobjdump", help="cuobjdump to list the embedded device code")
    p.add_argument("--json", help="write the report to this file")
    args = p.parse_args(argv)
    sys.path.insert(0, REPO)
    try:
        failures, report = check(args)
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"error: {str(exc).splitlines()[0]}")
        return 1
    print_report(failures, report)
    if args.json:
        report["failures"] = failures
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
