"""What the review app's tests share: a tiny bundle, four PTB-XL records, logging in, stores.

``store_url`` gives each test a fresh feedback store on SQLite and, where
``ECGRISK_TEST_POSTGRES_URL`` is set (``.ci/start-postgres`` sets it), on PostgreSQL: a schema
of its own, dropped afterwards, so these tests never touch the tables of the store's own tests.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from ecgrisk.bundle import Bundle
from ecgrisk.feedback import FeedbackStore
from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.preprocess import Preprocessing, Scaler

CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]
PASSWORD = "correct horse battery"
RECORDS = ("00001_lr", "00002_lr", "00003_lr", "00004_lr")
PG_URL = os.environ.get("ECGRISK_TEST_POSTGRES_URL")


def make_bundle(path, bias, version="7", name="tiny", seed=0):
    """A tiny random bundle whose head bias fixes which statements pass 0.5.

    Small random head weights keep the probabilities record-dependent (so the acquisition
    order is not trivial) while the bias decides the reading.
    """
    torch.manual_seed(seed)
    model = ECGClassifier(create_encoder("xresnet1d18", base_channels=8), num_classes=5).eval()
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.mul_(0.05)
        linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    Bundle(model=model, classes=CLASSES, preprocessing=Preprocessing(fs=100.0),
           scaler=Scaler(mean=0.0, std=1.0), temperature=np.ones(5), name=name,
           version=version).save(path)
    return path


def copy_records(ptbxl_root, dest):
    """A data folder of four shared PTB-XL records (without PTB-XL's database CSV)."""
    dest.mkdir(parents=True, exist_ok=True)
    for rec in RECORDS:
        for ext in (".hea", ".dat"):
            shutil.copy(ptbxl_root / "records100" / "00000" / (rec + ext), dest / (rec + ext))
    return dest


@contextmanager
def cheap_hashes():
    """scrypt at N=2^10 while adding accounts: fast, and verification honours the stored N
    (the real parameters are checked in test_password_hash_is_salted_and_verifies)."""
    from ecgrisk.review import auth

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth, "SCRYPT_N", 2**10)
        yield


def add_accounts(url, *names, password=PASSWORD):
    from ecgrisk.review import auth

    with cheap_hashes(), FeedbackStore(url) as store:
        for name in names:
            auth.add_user(store, name, password)


def form_token(client) -> str:
    """The CSRF token of the login form."""
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)


def try_login(client, name="dr-a", password=PASSWORD):
    """One sign-in through the form; the response (not followed)."""
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf_token": form_token(client)},
                       follow_redirects=False)


def login(client, name="dr-a", password=PASSWORD) -> str:
    """Log in through the form; the page's CSRF token."""
    r = try_login(client, name, password)
    assert r.status_code == 303, r.text
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)


def post_feedback(client, token, body, **headers):
    return client.post("/api/feedback", json=body, headers={"X-CSRF-Token": token, **headers})


@contextmanager
def fresh_store_url(kind: str, tmp_path):
    """A store location no test used: an SQLite path, or a new PostgreSQL schema (or skip)."""
    if kind == "sqlite":
        yield str(tmp_path / "feedback.db")
        return
    if not PG_URL:
        pytest.skip("ECGRISK_TEST_POSTGRES_URL is not set (source .ci/start-postgres)")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    schema = f"review_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    url = sqlalchemy.engine.make_url(PG_URL).update_query_dict(
        {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
