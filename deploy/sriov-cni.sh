#!/bin/sh
# The `sriov` CNI plugin on a node, put into /opt/cni/bin by the sriovlib-agent
# DaemonSet's init container (deploy/Containerfile, docs/kubernetes.md). It runs the
# agent image's sriovlib venv, copied to the node's /opt/sriovlib/current, with the
# node's own python3 (the venv's bin/python is a symlink to /usr/bin/python3).
venv=/opt/sriovlib/current/venv
if [ ! -x "$venv/bin/python" ]; then
    echo "sriov: no runnable $venv/bin/python (the node needs /usr/bin/python3)" >&2
    echo '{"cniVersion": "1.0.0", "code": 999, "msg": "sriov: sriovlib is not installed on this node (no runnable /opt/sriovlib/current/venv/bin/python)"}'
    exit 1
fi
exec "$venv/bin/python" "$venv/bin/sriov" "$@"
