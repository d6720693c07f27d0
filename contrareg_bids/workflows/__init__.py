"""Workflow factories (``init_<name>_wf``): they only wire the nodes of
:mod:`contrareg_bids.interfaces`."""
