#!/usr/bin/env bash
# Ray's cluster launcher, for real, on this one machine: `ray up` with the `local` provider of
# deploy/local.yaml reaching 127.0.0.1 over SSH, `ray submit` of examples/train_job.py, a check of the
# run directory it wrote; then everything is taken down by pid and every file touched is restored.
#
#   bash deploy/local/try-cluster-launcher.sh          (as root, from the repository, after .ci/setup)
#
# No SSH server listens anywhere: ssh's ProxyCommand runs `sshd -i` (inetd mode) for each connection,
# with its own config, host key and authorized key in a scratch folder. Ray's SSH commands run
# `bash --login -i` and source ~/.bashrc; the cluster YAML's setup command puts this venv on that PATH
# (the way Ray's docs install software), and ~/.bashrc is restored byte for byte at the end.
# Never `ray down` or `ray stop` (they end every Ray on the machine): the head runs as
# `ray start --head --block`, whose SIGTERM ends its processes.
# openssh-server and rsync (Ray's file mounts) are installed where absent, with no service started, and
# purged again at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
venv=$repo/.venv
[ "$(id -u)" = 0 ] || { echo "try-cluster-launcher: run as root (sshd -i logs in as the current user)" >&2; exit 2; }
[ -x "$venv/bin/ray" ] || { echo "try-cluster-launcher: no $venv/bin/ray; run bash .ci/setup first" >&2; exit 2; }

S=$(mktemp -d /tmp/dfa-lc.XXXX)  # short: Ray's socket paths must stay under 108 bytes
installed=() created_run_sshd= head_pid=
# ray up writes its bootstrap files into the head's home, ray submit the script; ray start records itself.
home_files=(~/.bashrc ~/ray_bootstrap_config.yaml ~/ray_bootstrap_key.pem ~/train_job.py /tmp/ray/ray_current_cluster)
for f in "${home_files[@]}"; do [ -e "$f" ] && cp -p "$f" "$S/home-$(basename "$f")"; done
ssh_dirs_before=$(ls -d /tmp/ray_ssh_* 2>/dev/null || true)
states_before=$(ls /tmp/ray/cluster-* 2>/dev/null || true)

teardown() {
  set +e
  if [ -n "$head_pid" ] && kill -0 "$head_pid" 2>/dev/null; then
    kill -TERM "$head_pid"
    for _ in $(seq 60); do kill -0 "$head_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  # ssh control masters and anything else started with this scratch folder in its command line.
  for pid in $(pgrep -f -- "$S/" || true); do [ "$pid" != $$ ] && kill -TERM "$pid" 2>/dev/null; done
  for f in "${home_files[@]}"; do
    if [ -e "$S/home-$(basename "$f")" ]; then cp -p "$S/home-$(basename "$f")" "$f"; else rm -f "$f"; fi
  done
  for d in $(ls -d /tmp/ray_ssh_* 2>/dev/null); do grep -qx "$d" <<<"$ssh_dirs_before" || rm -rf "$d"; done
  for f in $(ls /tmp/ray/cluster-* 2>/dev/null); do grep -qx "$f" <<<"$states_before" || rm -f "$f"; done
  [ -z "$created_run_sshd" ] || rmdir /run/sshd
  if [ ${#installed[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "${installed[@]}" >/dev/null 2>&1
    # --purge: a plain autoremove leaves the dependencies' config files (dpkg state rc), so the package
    # list differs from the one found (seen on a machine whose first run installed libwrap0)
    DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y -q >/dev/null 2>&1
  fi
  rm -rf "$S"
}
trap teardown EXIT

need() {  # package for a command, installed with services kept from starting
  command -v "$1" >/dev/null && return
  local policy=/usr/sbin/policy-rc.d own=
  [ -e $policy ] || { printf '#!/bin/sh\nexit 101\n' >$policy; chmod +x $policy; own=1; }
  echo "installing $2 (purged again at the end)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null 2>&1
  [ -z "$own" ] || rm -f $policy
  installed+=("$2")
}
need sshd openssh-server
need rsync rsync
[ -d /run/sshd ] || { mkdir -p /run/sshd; created_run_sshd=1; }

ssh-keygen -q -t ed25519 -N '' -f "$S/host" && ssh-keygen -q -t ed25519 -N '' -f "$S/key"
cp "$S/key.pub" "$S/authorized_keys"
cat >"$S/sshd_config" <<EOF
HostKey $S/host
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
EOF

port=$("$venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
dash=$("$venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
export RAY_AUTH_MODE=token  # Ray 2.60 heads require a token; clients send it in this mode
# deploy/local.yaml with what is particular to this machine: the SSH route, the venv (instead of pip
# installs), a head on free loopback ports in the scratch folder, and no `ray stop`.
"$venv/bin/python" - "$repo/deploy/local.yaml" "$S" "$venv" "$port" "$dash" "$repo" <<'EOF'
import sys
import yaml

src, S, venv, port, dash, repo = sys.argv[1:]
cfg = yaml.safe_load(open(src))
cfg["cluster_name"] = f"dfa-async-try-{S.rsplit('.', 1)[1]}"
cfg["auth"].update(ssh_private_key=f"{S}/key", ssh_proxy_command=f"/usr/sbin/sshd -i -f {S}/sshd_config")
cfg["file_mounts"] = {f"{S}/pkg": repo}
cfg["setup_commands"] = [f"echo 'export PATH={venv}/bin:$PATH RAY_AUTH_MODE=token' >> ~/.bashrc",
                         "python -c 'import dfa_async, ray'"]
cfg["head_start_ray_commands"] = [
    f"nohup ray start --head --block --node-ip-address=127.0.0.1 --port={port} --dashboard-host=127.0.0.1 "
    f"--dashboard-port={dash} --temp-dir={S}/ray --num-cpus=3 --disable-usage-stats "
    f"--autoscaling-config=~/ray_bootstrap_config.yaml > {S}/head.log 2>&1 < /dev/null & echo $! > {S}/head.pid",
    f"for i in $(seq 120); do ray status --address=127.0.0.1:{port} >/dev/null 2>&1 && exit 0; sleep 1; done; "
    f"cat {S}/head.log; exit 1"]
cfg["worker_start_ray_commands"] = []
yaml.safe_dump(cfg, open(f"{S}/cluster.yaml", "w"), sort_keys=False)
EOF

t0=$(date +%s)
echo "== ray up (local provider, head_ip 127.0.0.1, cluster YAML derived from deploy/local.yaml)"
"$venv/bin/ray" up -y --no-config-cache --disable-usage-stats "$S/cluster.yaml" >"$S/up.log" 2>&1 ||
  { tail -40 "$S/up.log"; exit 1; }
head_pid=$(cat "$S/head.pid")
echo "head running: ray start pid $head_pid, GCS 127.0.0.1:$port ($(($(date +%s) - t0)) s)"

echo "== ray submit examples/train_job.py"
data=()
[ -z "${DFA_ASYNC_DATA:-}" ] || data=(--set "data.dir=$(cd "$DFA_ASYNC_DATA" && pwd)")  # not carried over SSH
"$venv/bin/ray" submit "$S/cluster.yaml" examples/train_job.py -- --set "train.root=$S/runs" \
  --set train.name=job --set train.max_steps=300 --set "runtime.address=127.0.0.1:$port" "${data[@]}" \
  --no-progress 2>&1 | tee "$S/submit.log" | grep -E "^test_accuracy|error" || true

echo "== the run directory"
"$venv/bin/python" - "$S/runs/job" <<'EOF'
import sys
from pathlib import Path

from dfa_async import runlog

run = Path(sys.argv[1])
if not (run / "events.msgpack").exists():
    sys.exit(f"try-cluster-launcher: the job wrote no run directory at {run}")
done = runlog.read(run / "events.msgpack", "done")
stages = runlog.read(run / "events.msgpack", "stages")
assert done and (run / "final_model.pt").exists(), f"no finished run in {run}"
print(f"{sorted(p.name for p in run.iterdir() if not p.name.startswith('.'))}")
print(f"done: test_accuracy={done[0]['test_accuracy']:.4f} steps={done[0]['step']} stage pids={stages[0]['pids']}")
EOF
echo "ok: ray up + ray submit trained and wrote its run directory in $(($(date +%s) - t0)) s"
