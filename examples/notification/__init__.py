"""The notification-system example: client, notification/email/Slack bots, saga, views, API."""
