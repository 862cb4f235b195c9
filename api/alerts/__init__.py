"""Alerts: regressions into Slack, PagerDuty (Events API v2) and signed webhooks through a persisted outbox.

- ``destinations`` / ``rules``: where alerts go and which regressions alert (rows in ``alert_destinations`` and
  ``alert_rules``; secrets stored apart from options and never returned or logged).
- ``kinds``: the destination-kind contract and its one registry; ``slack`` / ``pagerduty`` / ``webhook`` are the
  kinds, each a pure payload builder plus its ``KIND`` entry (and ``webhook.verify_signature`` for receivers).
- ``outbox``: enqueue (``INSERT … ON CONFLICT DO NOTHING`` on (regression, destination, event): one trigger and
  one resolve per regression and destination, whatever the number of passes or restarts) and delivery bookkeeping.
- ``delivery``: one HTTP attempt and its outcome (sent / retry with backoff / failed); ``worker``: the service.
- ``config``: ``[[alerts.destinations]]`` / ``[[alerts.rules]]`` from the TOML file (config-as-code).
"""
