"""Attribution passes: detection pass, labelling pass, the job_runs records of each run, and the hash shards of the
series keys that ``spanprism worker`` processes lease (``shards``)."""
