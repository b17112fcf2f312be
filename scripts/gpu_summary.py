"""The one JSON summary of scripts/gpu_check.sh, from the files its steps left in OUT_DIR.

    python scripts/gpu_summary.py OUT_DIR --gpus "name, cap, driver" --arch-list "8.0;9.0+PTX"

Reads OUT_DIR/steps.tsv (step, exit status or a note, seconds) and what each step wrote:
cuda_build_check.json, cuda_tests.xml (JUnit), bench_layer_cuda.json, dasgd/summary.json.
Writes OUT_DIR/summary.json, prints it, and exits 0 when every step passed, else 1.
Standard library only: it also runs when the CUDA environment could not be set up.
"""
import argparse
import json
import os
import platform
import sys
import xml.etree.ElementTree as ET


def read_steps(out):
    steps, notes = {}, {}
    with open(os.path.join(out, "steps.tsv")) as f:
        for line in f:
            name, status, seconds = line.rstrip("\n").split("\t")
            if status.lstrip("-").isdigit():
                steps[name] = {"ok": status == "0", "exit": int(status),
                               "seconds": int(seconds), "log": f"{name}.log"}
            else:
                notes[name] = status
    return steps, notes


def load_json(path, keys=None):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return {k: data.get(k) for k in keys} if keys else data


def junit_counts(path):
    if not os.path.exists(path):
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def summarize(out, gpus, arch_list):
    steps, notes = read_steps(out)
    report = {"host": platform.node(), "gpus": [g.strip() for g in gpus.splitlines() if g],
              "torch_cuda_arch_list": arch_list, "steps": steps, "notes": notes}
    report["build_check"] = load_json(os.path.join(out, "cuda_build_check.json"),
                                      ["torch", "torch_cuda", "with_cuda", "sass", "ptx",
                                       "failures"])
    tests = junit_counts(os.path.join(out, "cuda_tests.xml"))
    report["cuda_tests"] = tests
    # A GPU test that skipped here did not check anything: count it as a failure.
    if tests and tests["skipped"] and "cuda_tests" in steps:
        steps["cuda_tests"]["ok"] = False
        notes["cuda_tests"] = f"{tests['skipped']} CUDA test(s) skipped on a GPU machine"
    report["bench_layer"] = load_json(os.path.join(out, "bench_layer_cuda.json"),
                                      ["device", "bn_step_s", "inv_step_s", "ref_step_s",
                                       "inv_over_bn", "ref_over_inv"])
    report["dasgd"] = load_json(os.path.join(out, "dasgd", "summary.json"),
                                ["world_size", "device", "test_acc", "images_per_s", "step_s",
                                 "comm_wait_s", "wall_s"])
    report["ok"] = bool(steps) and all(s["ok"] for s in steps.values()) and \
        "dasgd" in steps
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--gpus", default="")
    p.add_argument("--arch-list", default="")
    args = p.parse_args(argv)
    try:
        report = summarize(args.out, args.gpus, args.arch_list)
    except (OSError, ValueError, ET.ParseError) as exc:
        print(f"error: cannot summarize {args.out}: {exc}", file=sys.stderr)
        return 2
    path = os.path.join(args.out, "summary.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    print(f"{'ok' if report['ok'] else 'FAILED'}: {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
