"""``plan-probe benchmark``: planned probe budgets against fair baselines on held-out tasks (issue #18)."""
