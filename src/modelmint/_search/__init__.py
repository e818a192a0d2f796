"""Budgeted model search: an Optuna study over a task's candidates, a leaderboard, publishing."""
