"""`/v1/models/{name}/rollout`: start a canary of a challenger version, read its evidence, stop it, promote it.

These routes change what is served: with a management key set they need it (service/core/auth.py). The state is
in the prediction log's database (service/rollouts/records.py), so every HTTP process and replica follows it.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request

from service.core import auth, schemas
from service.core.errors import Conflict, ModelNotFound, ModelNotReady
from service.dataplane.gateway import Gateway
from service.rollouts import records
from service.rollouts.records import Rollout

CODES = {code: {"model": schemas.ErrorResponse} for code in (400, 401, 403, 404, 409, 422, 503)}
TAGS = ["rollouts"]


def register(app: FastAPI, gateway: Gateway) -> None:
    path = "/v1/models/{name}/rollout"

    @app.post(path, response_model=schemas.RolloutStatus, responses=CODES, tags=TAGS, summary="Start a rollout")
    async def start(name: str, body: schemas.RolloutRequest, request: Request):
        """A canary of `challenger` against the version answering now. 409: one runs already, the challenger is
        the champion, or it is unavailable; 404: no such model or version."""
        auth.check_management(dict(request.scope["headers"]), gateway.settings)
        controller = _controller(gateway)
        champion = gateway.registry.get(name)
        try:
            challenger = gateway.registry.get(name, body.challenger)
        except ModelNotReady as e:
            raise Conflict(e.message, reason="version_unavailable", field="challenger", got=body.challenger) from None
        if challenger.version == champion.version:
            raise Conflict(f"version {champion.version} already answers {name!r}: name another challenger",
                           reason="challenger_is_champion", field="challenger", got=body.challenger)  # fmt: skip

        def begin(store):
            try:
                return records.start(store, name, champion.version, challenger.version, body.mode, body.percent,
                                     body.auto)  # fmt: skip
            except records.RolloutAlreadyRunning:
                return None

        rollout = await gateway.database.run(begin)
        if rollout is None:
            raise Conflict(f"a rollout of {name!r} is already running: stop it first (DELETE {path})",
                           reason="rollout_running")  # fmt: skip
        controller.running[name] = rollout
        return await _status(gateway, rollout)

    @app.get(
        path, response_model=schemas.RolloutStatus, responses=CODES, tags=TAGS, summary="The rollout and its evidence"
    )
    async def status(name: str):
        """The newest rollout of the model, running or ended, with the evidence per arm."""
        _controller(gateway)
        return await _status(gateway, await _newest(gateway, name))

    @app.delete(path, response_model=schemas.RolloutStatus, responses=CODES, tags=TAGS, summary="Stop the rollout")
    async def stop(name: str, request: Request):
        """The champion answers everything again; nothing is promoted."""
        return await _end(gateway, name, request, "stopped", "stopped by hand")

    @app.post(path + "/promote", response_model=schemas.RolloutStatus, responses=CODES, tags=TAGS,
              summary="Promote the challenger now")  # fmt: skip
    async def promote(name: str, request: Request):
        """The challenger answers by default from now on (pinned in the model's policy.json)."""
        return await _end(gateway, name, request, "promoted", "promoted by hand")


def _controller(gateway: Gateway):
    if gateway.rollouts is None:
        raise ModelNotFound("rollouts need the prediction log; this server runs with TABSERVE_PREDICTION_LOG=off",
                            reason="prediction_log_off")  # fmt: skip
    return gateway.rollouts


async def _newest(gateway: Gateway, name: str) -> Rollout:
    gateway.registry.get(name)  # 404 for an unknown model
    rollout = await gateway.database.run(lambda store: records.latest(store, name))
    if rollout is None:
        raise ModelNotFound(f"model {name!r} has had no rollout", reason="no_rollout")
    return rollout


async def _end(gateway: Gateway, name: str, request: Request, state: str, reason: str):
    auth.check_management(dict(request.scope["headers"]), gateway.settings)
    controller = _controller(gateway)
    rollout = await _newest(gateway, name)
    ended = await controller.conclude(rollout, state, reason) if rollout.state == "running" else None
    if ended is None:
        raise Conflict(f"no rollout of {name!r} is running (the last one was {rollout.state})",
                       reason="no_running_rollout")  # fmt: skip
    return await _status(gateway, ended)


async def _status(gateway: Gateway, rollout: Rollout) -> dict:
    if rollout.evidence is not None:
        evidence = json.loads(rollout.evidence)
    else:
        arms = await gateway.database.run(lambda store: records.evidence(store, rollout))
        evidence = records.public(rollout, arms)
    return {"id": rollout.id, "model": rollout.model, "champion": rollout.champion, "challenger": rollout.challenger,
            "mode": rollout.mode, "percent": rollout.percent, "auto": rollout.auto, "state": rollout.state,
            "evidence": evidence, "reason": rollout.reason, "started_at": rollout.started_at,
            "decided_at": rollout.decided_at}  # fmt: skip
