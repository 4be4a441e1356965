"""The entrypoint for Ray's cluster launcher and Ray Jobs: `dfa-async train` with the arguments given.

    ray submit deploy/aws-gpu.yaml examples/train_job.py -- --set train.root=/mnt/shared/runs
    ray job submit --working-dir . -- python examples/train_job.py --set train.root=/mnt/shared/runs

Inside a job the run joins the cluster it runs in ($RAY_ADDRESS); give train.root on storage every node
shares (a relative root would fall inside Ray's copy of the working dir and is refused)."""
import sys

from dfa_async.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
