"""Jobs: an agent, team or workflow run on a cron schedule (a Temporal Schedule), by a signed
inbound webhook, or by hand. Every run, however triggered, goes through `runs.run_job`."""
