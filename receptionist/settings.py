from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.job_settings import JobSettings


class Settings(JobSettings):
    model_config = SettingsConfigDict(env_prefix="RECEPTIONIST_", extra="ignore")

    port: int = 8081
    #: The registry's and the scheduler's base URLs, each one URL or its instances' as a comma-separated
    #: list (failover: :mod:`shared.http`).
    registry_url: str = "http://127.0.0.1:8091"
    scheduler_url: str = "http://127.0.0.1:8090"
    #: The logging service, read for ``GET /logs`` and ``GET /jobs/{id}/logs`` (empty: those are 503).
    logging_url: str = ""
    #: Largest JSON body accepted (413 beyond).
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: Largest ``POST /ecgs`` body accepted (413 beyond): twelve leads of a million samples need ~90 MB.
    max_ecg_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    #: Largest bulk data file accepted (``POST /v1/imports``), uploaded or fetched from a URL (413 beyond).
    #: Uploads are streamed to the artifact store, never held whole.
    max_upload_bytes: int = Field(default=1024**3, ge=1024)
    #: The bulk data store the handlers' imports write, opened read-only for each ``GET /v1/exports``
    #: stream (``sqlite:///path``).
    data_store_url: str = "sqlite:///var/data.db"
    #: CSV exports (streamed, and the files of export jobs submitted here) give a cell that starts like
    #: a formula (``=``, ``+``, ``-``, ``@``, tab, carriage return) a leading single quote and quote it, so
    #: a spreadsheet shows it rather than runs it (OWASP). Turn off only for consumers that are no spreadsheet.
    csv_escape_formulas: bool = True
    #: Retry backoffs are the kind's, times this (``conveyor up --time-scale`` sets it with the handlers').
    time_scale: float = Field(default=1.0, ge=0)
    #: A task's simulated work when the client names none.
    task_duration_s: float = Field(default=1.0, ge=0)
    #: The chance that one attempt of a task fails, when the client names none.
    task_fail_probability: float = Field(default=0.1, ge=0, le=1)
    #: How often the sweeper looks for jobs that no queue holds (0: never).
    sweep_interval_s: float = Field(default=5.0, ge=0)
    #: A pending job is the sweeper's business only when untouched this long (its receptionist may be
    #: between registering and enqueueing it).
    sweep_pending_after_s: float = Field(default=10.0, ge=0)
    #: Likewise for a processing job (a handler reports progress and outcomes; leases expire on their own).
    sweep_processing_after_s: float = Field(default=60.0, ge=0)
    #: One sweeper sweeps at a time, under a lock of the scheduler that lasts this long (renewed at each
    #: page of jobs): a receptionist that dies mid-sweep holds the others off this long at most.
    sweep_lock_s: float = Field(default=30.0, gt=0, le=3600)
    #: Permissions a kind needs to be submitted, by kind, as JSON: only holders of ``exporter`` start
    #: data exports (they read every record), only holders of ``importer`` data imports (they overwrite
    #: any record: records keep no owner). A book export needs none, so the seed's examples work for
    #: every user.
    kind_permissions: dict[str, str] = Field(default_factory=lambda: {"data_export": "exporter",
                                                                      "data_import": "importer"})
    #: A job's artifacts (its result, its upload) are kept this long after it ended; then a download is a
    #: 410 and the files are deleted.
    artifact_ttl_s: float = Field(default=3600.0, gt=0)
    #: How often expired artifacts are looked for (0: never).
    artifact_sweep_interval_s: float = Field(default=60.0, ge=0)
    #: Registrations and enqueues made within this long of each other go out as one request.
    batch_window_s: float = Field(default=0.002, ge=0, le=1)
    #: How often this receptionist asks the registry for due schedules and fires them (0: never). Every
    #: receptionist may fire; each due time fires once whichever does (:mod:`receptionist.firing`).
    schedule_poll_s: float = Field(default=1.0, ge=0)
    #: Due schedules fired per poll, at most (the rest wait for the next poll).
    schedule_batch: int = Field(default=100, ge=1, le=1000)
    #: How long the queue lengths used for backpressure are trusted before they are asked again.
    backpressure_refresh_s: float = Field(default=0.25, ge=0)
    #: A quiet event stream gets a ``: keep-alive`` comment this often: well under the read timeout of
    #: anything in between (the gateway's ``GATEWAY_UPSTREAM_TIMEOUT_S``, 60 s), so none cuts the stream.
    event_keepalive_s: float = Field(default=15.0, gt=0)
    #: How long each of an event stream's long polls of the registry waits for something new (at most 30).
    event_poll_wait_s: float = Field(default=10.0, gt=0, le=30)
    #: Event streams open at once, at most (each holds a connection to the registry); 503 beyond.
    event_streams_max: int = Field(default=100, ge=1)
    #: Event streams one caller may hold open here at once (a user; an anonymous client by its address);
    #: 429 beyond, so that no one takes every slot of ``event_streams_max``.
    event_streams_per_identity: int = Field(default=10, ge=1)
    #: How often the lines of a log stream's filter are read from the logging service (once for every
    #: stream of that filter), and how many at most a time (``GET /logs/stream``).
    log_stream_tick_s: float = Field(default=1.0, gt=0, le=60)
    log_stream_lines: int = Field(default=500, ge=1, le=5000)
    #: Unused: log streams follow the lines' sequence numbers, so a line shipped late always comes. Kept so
    #: that a configuration which sets it still starts.
    log_stream_lookback_s: float = Field(default=5.0, ge=0, le=300)
