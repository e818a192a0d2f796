"""Budgeted model search (issue 6): candidates per task, an Optuna study, a leaderboard."""

from .contract import TASKS, Candidate, Fitted, TaskData

__all__ = ["TASKS", "Candidate", "Fitted", "TaskData"]
