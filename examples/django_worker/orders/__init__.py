"""Orders: a view that enqueues them and a `qchan_worker` command that handles them."""
