"""`manage.py enroll_token create|list|revoke`: enrollment tokens for device agents."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from jobs.models import EnrollmentToken


class Command(BaseCommand):
    help = "Create, list or revoke enrollment tokens that device agents exchange for their own."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="issue a token; the plain token is printed once")
        create.add_argument("--name", default="", help="a label, e.g. 'lab Pis'")
        create.add_argument("--hours", type=float, default=24, help="lifetime (default 24)")
        create.add_argument(
            "--quiet", action="store_true", help="print only the token (for scripts)"
        )
        sub.add_parser("list", help="show tokens (never their values)")
        revoke = sub.add_parser("revoke", help="stop a token enrolling more devices")
        revoke.add_argument("id", type=int)

    def handle(self, *args, action: str, **opts):
        if action == "create":
            if not 0 < opts["hours"] <= 24 * 365:
                raise CommandError("--hours must be more than 0 and at most 8760 (a year)")
            record, plain = EnrollmentToken.issue(name=opts["name"], hours=opts["hours"])
            if opts["quiet"]:
                self.stdout.write(plain)
                return
            self.stdout.write(
                f"enrollment token {record.pk} (expires {record.expires:%Y-%m-%d %H:%M} UTC):"
            )
            self.stdout.write(plain)
            self.stdout.write(
                "shown once; on the device run: python -m pi_agent register "
                f"--server http://THIS-SERVER:8000 --enroll-token {plain}"
            )
        elif action == "list":
            now = timezone.now()
            for t in EnrollmentToken.objects.order_by("-created"):
                state = "revoked" if t.revoked else "expired" if t.expires <= now else "active"
                self.stdout.write(
                    f"{t.pk:>4}  {state:<8} expires {t.expires:%Y-%m-%d %H:%M}  "
                    f"used {t.uses}x  {t.name}"
                )
        else:
            updated = EnrollmentToken.objects.filter(pk=opts["id"]).update(revoked=True)
            if not updated:
                raise CommandError(
                    f"there is no enrollment token {opts['id']}: see `enroll_token list`"
                )
            self.stdout.write(f"enrollment token {opts['id']} revoked")
