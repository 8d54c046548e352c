"""instructor against the embedded model, with instructor's own defaults (its retries, the model's default
temperature) across three seeds: every mode its users pick gets a validated object back."""

from __future__ import annotations

import instructor
import openai
import pytest
from pydantic import BaseModel, Field

from tests.real.clients import SEEDS, SMOL


class User(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(max_length=20)
    age: int
    city: str = Field(max_length=20)


class Task(BaseModel):
    title: str = Field(max_length=30)


PROMPT = "Extract the person: Jason is 25 years old and lives in Paris."
TASKS = "List the tasks: buy milk, call Anna, fix the bike."


@pytest.fixture(scope="module")
def openai_client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def client_in(openai_client, mode: instructor.Mode):
    return instructor.from_openai(openai_client, mode=mode)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_create_returns_a_validated_object(openai_client, mode, seed):
    # Mode.TOOLS (instructor's default) names the function in tool_choice: exactly one call comes back.
    user = client_in(openai_client, mode).chat.completions.create(
        model=SMOL, response_model=User, messages=[{"role": "user", "content": PROMPT}], max_tokens=400, seed=seed
    )
    assert isinstance(user, User)


@pytest.mark.xfail(
    strict=True,
    reason="Mode.JSON sends response_format json_object, which carries no schema: the output is a JSON object, but "
    "SmolLM2-135M fills in the schema's own shape (description, properties) instead of an instance, even greedy",
)
def test_mode_json_with_the_embedded_model(openai_client):
    client_in(openai_client, instructor.Mode.JSON).chat.completions.create(
        model=SMOL, response_model=User, messages=[{"role": "user", "content": PROMPT}], max_tokens=200, seed=1
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_create_partial_streams_growing_objects(openai_client, mode, seed):
    partials = list(
        client_in(openai_client, mode).chat.completions.create_partial(
            model=SMOL, response_model=User, messages=[{"role": "user", "content": PROMPT}], max_tokens=400, seed=seed
        )
    )
    # JSON_SCHEMA streams the content, TOOLS the call's arguments, token by token: partial objects grow.
    assert len(partials) > 1
    User.model_validate(partials[-1].model_dump())  # and the last one is whole


@pytest.mark.parametrize("seed", SEEDS)
def test_create_iterable_gives_objects_one_by_one(openai_client, seed):
    tasks = list(
        client_in(openai_client, instructor.Mode.TOOLS).chat.completions.create_iterable(
            model=SMOL, response_model=Task, messages=[{"role": "user", "content": TASKS}], max_tokens=400, seed=seed
        )
    )
    # The iterable's schema allows an empty list, and a 135M model sometimes picks it: what instructor guarantees
    # (and the grammar enforces) is that every object it yields validates.
    assert all(isinstance(task, Task) for task in tasks)
