"""The infrastructure every layer stands on: settings, the database, logs, metrics, Sentry, errors, the named SQL."""
