"""Declarative node policy: what ``sriovlib apply`` reads, merges, plans and applies.

A policy file holds SR-IOV node policies with the fields of sriov-network-operator's
``SriovNetworkNodePolicy`` spec, either as sriovlib's own document::

    policies:
      - name: pool-a
        resourceName: poolA
        numVfs: 4
        mtu: 9000
        nicSelector: {pfNames: ["ens1f0#0-1"]}

or as the operator's own documents (``apiVersion: sriovnetwork.openshift.io/v1``,
``kind: SriovNetworkNodePolicy``, or a ``List`` of them as ``kubectl get -o yaml``
prints), several per file as YAML documents, or JSON.

Four steps, each separable so it can be tested without hardware:

1. :func:`parse_policies` checks the file: unknown fields are errors with a suggestion,
   values are checked the way the operator's webhook does;
2. :func:`merge` selects this node's PFs and merges overlapping policies as the
   operator does: in order of priority (a lower number wins), then name; on one PF the
   VF ranges of a higher-priority policy replace overlapping ranges of lower ones, a
   VF range claimed by two policies of equal priority is a conflict naming both, and
   the PF gets the largest ``numVfs`` and ``mtu`` of the policies left on it;
3. :func:`plan` compares the merged target with the node and lists every change, each
   labelled :class:`Disruption` (live, disrupts pods holding VFs of the PF, needs a
   reboot), reboot-only changes with the command that makes them;
4. :func:`apply` carries the plan out in the vendor plugins' order (PF link up and MTU,
   eswitch mode and VF count through the plugin's numvfs plan, VF driver binding, VF
   MTU), refusing disruptive changes while VFs are in use unless forced. A plan of a
   node already in the target state is empty, so a second apply writes nothing.

:func:`pool_config` writes the device-plugin pools the policies' ``resourceName``\\ s
describe. See ``docs/policy.md``.

One module per step, this package re-exporting their public names: ``model`` (the
policies as read, the merged target, :class:`PolicyError`), ``parsing``, ``merging``
(with :func:`pool_config`), ``planning`` and ``applying``.
"""

from sriovlib.policy.applying import ApplyReport, apply
from sriovlib.policy.merging import merge, pool_config
from sriovlib.policy.model import (
    MAX_POLICY_FILE,
    OPERATOR_API,
    Disruption,
    NicSelector,
    NodePolicy,
    NodeTarget,
    PfName,
    PfTarget,
    PolicyError,
    PolicyFile,
    VfBudget,
    VfGroup,
)
from sriovlib.policy.parsing import load_policies, parse_policies
from sriovlib.policy.planning import Change, PfPlan, Plan, plan

__all__ = [
    "MAX_POLICY_FILE",
    "OPERATOR_API",
    "ApplyReport",
    "Change",
    "Disruption",
    "NicSelector",
    "NodePolicy",
    "NodeTarget",
    "PfName",
    "PfPlan",
    "PfTarget",
    "Plan",
    "PolicyError",
    "PolicyFile",
    "VfBudget",
    "VfGroup",
    "apply",
    "load_policies",
    "merge",
    "parse_policies",
    "plan",
    "pool_config",
]
