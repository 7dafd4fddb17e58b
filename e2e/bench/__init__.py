"""``make bench``: what kloop itself costs, measured against a real apiserver.

Two modes, and every figure says which one it comes from:

- **operator only** (:mod:`e2e.bench.operator_only`): an extra apiserver with no scheduler,
  kubelet or controller-manager; a bench driver plays the kubelet (binds each kloop pod to a node
  the bench registers and writes its status and termination message at once), so the operator's
  own latency, CPU, memory and API traffic are isolated from container start-up;
- **real pods** (:mod:`e2e.bench.real_pods`): the local cluster as a user has it.

Speed targets live here, never in timed unit tests: a timing assertion in the suite fails on a
busy machine and says nothing about the code. Run from the repository root.
"""
