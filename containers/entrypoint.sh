#!/bin/sh
# Entrypoint of the contrareg-bids image (Docker ENTRYPOINT, Apptainer %runscript).
#
# Apptainer runs the image as the calling user, often with a read-only or missing HOME;
# container_env moves HOME and the caches (Nipype, matplotlib, torch, XDG) to a temporary
# folder when they are not writable and warns when TEMPLATEFLOW_HOME cannot work offline.
# Then the app runs: `contrareg-bids ARGS`, or one of the commands below given first
# (e.g. `docker run IMAGE contrareg-train ...`, `apptainer run IMAGE torchrun ...`).
set -eu

exports=$(python -m contrareg_bids.cli.container_env --print-env)
eval "$exports"

case "${1:-}" in
    contrareg-bids | contrareg-train | contrareg-eval | contrareg-bids-demo | \
        torchrun | python | python3 | bash | sh)
        exec "$@"
        ;;
esac
exec contrareg-bids "$@"
