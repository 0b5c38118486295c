"""Expert raters in a real Label Studio: each joins through the admin's invite link (the sign-up form a person
fills in), then submits annotations through label-studio-sdk. Run by tests/test_review_label_studio.py with the
Label Studio venv's Python (the SDK's numpy pin clashes with the project's), JSON on stdin and stdout.
"""

import json
import sys

import requests
from label_studio_sdk import LabelStudio


def _session_token(url: str, invite_url: str, email: str, password: str) -> str:
    """Log in (or sign up through the invite link the first time) and read the rater's own API token."""
    session = requests.Session()
    for page in ("/user/login/", invite_url):
        session.get(url + page, timeout=30)
        form = {"email": email, "password": password, "csrfmiddlewaretoken": session.cookies.get("csrftoken")}
        answer = session.post(
            url + page, data=form | {"how_find_us": "Other"}, headers={"Referer": url + page}, allow_redirects=False
        )
        if answer.status_code == 302:
            return session.get(url + "/api/current-user/token", timeout=30).json()["token"]
    raise SystemExit(f"{email} could neither log in nor sign up at {url}")


def main() -> int:
    request = json.load(sys.stdin)
    url = request["url"]
    admin = LabelStudio(base_url=url, api_key=request["admin_token"])
    invite = admin.organizations.invites.get_invite_link().invite_url
    user_ids = {}
    for rater in request["raters"]:
        client = LabelStudio(base_url=url, api_key=_session_token(url, invite, rater["email"], rater["password"]))
        for annotation in rater["annotations"]:
            client.annotations.create(id=annotation["task"], result=annotation["result"], lead_time=42.0)
        user_ids[rater["email"]] = client.users.whoami().id
    json.dump(user_ids, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
