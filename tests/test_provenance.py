"""Every results JSON carries where it came from (experiments/provenance.py)."""
import os
import time

from experiments import provenance as prov


def test_provenance_carries_every_field():
    started = prov.start()
    info = prov.provenance(["claims", "--out", "runs/x y"], started, threads=1,
                           module="launch.study")
    assert set(info) == set(prov.FIELDS)
    assert info["command"] == "python -m launch.study claims --out 'runs/x y'"
    assert info["argv"] == ["claims", "--out", "runs/x y"]
    assert len(info["commit"]) == 40 and isinstance(info["dirty"], bool)
    assert info["cores"] == os.cpu_count() and info["threads"] == 1
    assert info["cpu_model"]
    assert len(info["load_start"]) == 3 and len(info["load_end"]) == 3
    assert info["loaded"] == (started["load"][0] > os.cpu_count())
    assert info["python"].count(".") == 2 and info["torch"] and info["horovod"]
    assert info["openmpi"] and info["openmpi"][0].isdigit()
    assert info["date_start"].endswith("+00:00") and info["wall_s"] >= 0


def test_loaded_follows_the_start_load():
    cores = os.cpu_count()
    busy = prov.provenance([], {"time": time.time(), "load": [cores + 0.5, 1.0, 1.0]})
    quiet = prov.provenance([], {"time": time.time(), "load": [cores - 0.5, 9.0, 9.0]})
    unknown = prov.provenance([], time.time())
    assert (busy["loaded"], quiet["loaded"], unknown["loaded"]) == (True, False, None)
