"""Every ``web.AppKey`` of the receptionist, in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from receptionist.data_reader import DataReader
from receptionist.expiry import ArtifactSweeper
from receptionist.firing import ScheduleFirer
from receptionist.log_followers import LogFollowers
from receptionist.queueing import Backpressure
from receptionist.settings import Settings
from receptionist.sse import OpenStreams
from receptionist.sweeper import Sweeper
from shared.artifacts import ArtifactStore
from shared.batching import Batcher
from shared.http import ServiceClient
from shared.upstream_client import UpstreamClient

SETTINGS = web.AppKey("settings", Settings)
SESSION = web.AppKey("session", aiohttp.ClientSession)
#: The lean client of the receptionist's calls to the registry, the scheduler and the logging service.
UPSTREAM = web.AppKey("upstream", UpstreamClient)
REGISTRY = web.AppKey("registry", ServiceClient)
SCHEDULER = web.AppKey("scheduler", ServiceClient)
ARTIFACTS = web.AppKey("artifacts", ArtifactStore)
COUNTERS = web.AppKey("counters", dict)
BACKPRESSURE = web.AppKey("backpressure", Backpressure)
SWEEPER = web.AppKey("sweeper", Sweeper)
#: The loop that fires due periodic schedules.
FIRER = web.AppKey("firer", ScheduleFirer)
#: Registrations and enqueues of submissions that arrive together, each sent as one request.
CREATES = web.AppKey("creates", Batcher)
ENQUEUES = web.AppKey("enqueues", Batcher)
ARTIFACT_SWEEPER = web.AppKey("artifact_sweeper", ArtifactSweeper)
#: The logging service, when one is configured.
LOGS = web.AppKey("logs", ServiceClient | None)
#: The open server-sent event streams (:mod:`receptionist.events`).
EVENT_STREAMS = web.AppKey("event_streams", OpenStreams)
#: The followers of the open log streams, one per filter (:mod:`receptionist.log_stream`).
LOG_FOLLOWERS = web.AppKey("log_followers", LogFollowers)
#: The bulk data store, read-only, for streamed exports (opened at the first one).
DATA_READER = web.AppKey("data_reader", DataReader)
