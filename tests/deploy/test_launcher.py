"""Ray's cluster launcher for real: deploy/local/try-cluster-launcher.sh runs `ray up` (local provider,
SSH to 127.0.0.1 through `sshd -i`, nothing listening) and `ray submit`, and leaves the machine as it
found it."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# It installs openssh-server and rsync (and removes them): opt-in, never in the README's test command.
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local" / "try-cluster-launcher.sh"


def machine_state():
    home = Path.home()
    ray_tmp = Path("/tmp/ray")
    return {
        "home": sorted(p.name for p in home.iterdir()),
        "bashrc": (home / ".bashrc").read_bytes() if (home / ".bashrc").exists() else None,
        # (session folders of other Ray instances may come and go meanwhile; the script's head has its own)
        "ray_tmp": sorted(p.name for p in ray_tmp.iterdir() if not p.name.startswith("session"))
        if ray_tmp.exists() else [],
        "packages": subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n"], capture_output=True,
                                   text=True).stdout if shutil.which("dpkg-query") else "",
        "run_sshd": Path("/run/sshd").exists(),
        "scratch": sorted(p.name for p in Path("/tmp").glob("dfa-lc.*")),
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="the script logs in as the current user through sshd -i: root")
@pytest.mark.skipif(shutil.which("sshd") is None and shutil.which("apt-get") is None,
                    reason="needs openssh-server, or apt-get to install it")
def test_ray_up_and_ray_submit_on_this_machine_leave_it_as_found(shared_data):
    before = machine_state()
    env = dict(os.environ, DFA_ASYNC_DATA=str(shared_data))
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "ok: ray up + ray submit trained and wrote its run directory" in out
    assert "['checkpoints', 'config.toml', 'events.msgpack', 'final_model.pt']" in out
    assert machine_state() == before
    ours = subprocess.run(["pgrep", "-f", "/tmp/dfa-lc."], capture_output=True, text=True).stdout.split()
    assert not ours, "processes of the script are still running"
