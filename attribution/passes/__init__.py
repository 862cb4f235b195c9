"""Attribution passes: detection pass, labelling pass, and the job_runs records of each run."""
