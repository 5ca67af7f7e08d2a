"""The exceptions the CLI turns into one clear line and a non-zero exit code."""


class UserError(Exception):
    """Bad input or config: the message names the file, row or field at fault."""

    exit_code = 2


class BudgetExceeded(UserError):
    """judge.max_cost_usd or judge.max_calls reached; state is saved and a rerun continues."""

    exit_code = 4


class QuotaExceeded(UserError):
    """The API said the account is out of quota (429 insufficient_quota): retrying cannot help."""

    exit_code = 5


class JudgeUnreliable(UserError):
    """Position consistency fell below judge.min_consistency: no pairs are written from noise."""

    exit_code = 6


class JudgeIncomplete(UserError):
    """Some judge calls got no reply after all retries; a rerun sends only those again."""

    exit_code = 7
