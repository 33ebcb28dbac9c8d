"""The notification example's handlers, and the streams each one reads, writes and appends to.

Run its bots with ``streamcqrs run examples.notification.app:app`` (all of them), or one
subsystem's with ``--only notification`` / ``--only email`` / ``--only slack``. A handler
belongs to the subsystem of its input stream, so the saga's handlers of email and Slack
outcomes run with ``--only email`` and ``--only slack``.

=====================  ============================  ==================  =========================
handler                input                         concern             outputs
=====================  ============================  ==================  =========================
request_notification   notification/client-ops       notify              notification aggregate,
                                                                         email/slack client-ops,
                                                                         sagas, delayed deadline
start_saga             notification/sagas            saga                saga (+ terminal event)
record_outcome         email/events, slack/events    notification-saga   saga (+ terminal event)
check_deadline         notification/internal-ops     internal            saga (+ terminal event)
report_failure         notification/events           report-failure      notification/internal-ops
email_internal_team    notification/internal-ops     internal            email/client-ops
record_report          email/events                  failure-report      notification aggregate
project                notification/events           views               views, snapshots
send_email             email/client-ops              send                email delivery aggregate
send_slack             slack/client-ops              send                slack delivery aggregate
=====================  ============================  ==================  =========================
"""

from __future__ import annotations

from examples.notification import delivery, notify, saga, views
from examples.notification.messages import (
    AwaitDeliveries,
    CheckDeadline,
    DeadlinePassed,
    EmailFailed,
    EmailSent,
    FailureReportedToInternalTeam,
    NotificationFailed,
    NotificationRequested,
    NotificationSent,
    NotificationSuppressed,
    OutcomeRecorded,
    ReportFailure,
    SagaCompleted,
    SagaStarted,
    SendEmail,
    SendNotification,
    SendSlackMessage,
    SlackMessageFailed,
    SlackMessageSent,
)
from streamcqrs.handlers import App

app = App("notification")
"""The app ``streamcqrs run examples.notification.app:app`` runs."""

app.handler(
    SendNotification,
    stream="notification/client-ops",
    concern="notify",
    appends=["notification"],
    writes=[
        "email/client-ops",
        "slack/client-ops",
        "notification/sagas",
        "notification/internal-ops",
    ],
)(notify.request_notification)

app.handler(AwaitDeliveries, stream="notification/sagas", concern="saga",
            appends=["notification"])(saga.start_saga)  # fmt: skip
app.handler(EmailSent, EmailFailed, stream="email/events", concern="notification-saga",
            appends=["notification"], name="record_email_outcome")(saga.record_outcome)  # fmt: skip
app.handler(SlackMessageSent, SlackMessageFailed, stream="slack/events",
            concern="notification-saga", appends=["notification"],
            name="record_slack_outcome")(saga.record_outcome)  # fmt: skip
app.handler(CheckDeadline, stream="notification/internal-ops", concern="internal",
            appends=["notification"])(saga.check_deadline)  # fmt: skip

app.handler(NotificationFailed, stream="notification/events", concern="report-failure",
            writes=["notification/internal-ops"])(notify.report_failure)  # fmt: skip
app.handler(ReportFailure, stream="notification/internal-ops", concern="internal",
            appends=["notification"],
            writes=["email/client-ops"])(notify.email_internal_team)  # fmt: skip
app.handler(EmailSent, stream="email/events", concern="failure-report",
            appends=["notification"])(notify.record_report)  # fmt: skip

app.handler(
    NotificationRequested,
    NotificationSent,
    NotificationFailed,
    NotificationSuppressed,
    FailureReportedToInternalTeam,
    SagaStarted,
    OutcomeRecorded,
    DeadlinePassed,
    SagaCompleted,
    stream="notification/events",
    concern="views",
    start="beginning",  # a projection: a new one builds its views from the whole history
    appends=["notification"],
    reads=[views.VIEWS],
    writes=[views.VIEWS, "notification/snapshots"],
)(views.project)

app.handler(SendEmail, stream="email/client-ops", concern="send",
            appends=["email"])(delivery.send_email)  # fmt: skip
app.handler(SendSlackMessage, stream="slack/client-ops", concern="send",
            appends=["slack"])(delivery.send_slack)  # fmt: skip

__all__ = ["app"]
