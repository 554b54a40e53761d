"""Masked FedAvg, shared by MPFL, SSFL and FedSparsify: the wire contract
(:mod:`.wire`) and the client side (:mod:`.client`) of training ``w * mask``."""
