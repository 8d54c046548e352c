"""The client libraries people point at the server, each driven the way its users drive it, with its own defaults.

`LIBRARIES` is what the README's compatibility matrix is made from (`scripts/client_matrix.py`): one row per
library, its test module and what that module covers. A module here without a row, or a row without a module,
fails tests/test_client_matrix.py.
"""

from __future__ import annotations

from dataclasses import dataclass

SMOL = "smollm2-135m-instruct"
# Each test runs at the library's default temperature under three seeds, not only greedy: a tiny model must not be
# able to run away with structured output whatever it samples.
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class Library:
    name: str
    distribution: str  # the PyPI name whose installed version the matrix reports
    module: str  # the test module, under tests/
    covers: str
    environment: str | None = None  # a virtualenv of its own (under the checkout) where the library runs


LIBRARIES = (
    Library(
        "instructor",
        "instructor",
        "real/clients/test_instructor_real.py",
        "`Mode.TOOLS`, `Mode.JSON_SCHEMA`, `Mode.JSON` (a model with `max_length` fields and an integer), "
        "`create_partial` streaming, `create_iterable`",
    ),
    Library(
        "OpenAI Agents SDK",
        "openai-agents",
        "real/clients/test_openai_agents_real.py",
        "an agent with a function tool on `OpenAIResponsesModel` and `OpenAIChatCompletionsModel`, `Runner.run` "
        "and `Runner.run_streamed`, tracing off",
    ),
    Library(
        "LiteLLM",
        "litellm",
        "real/clients/test_litellm_real.py",
        "`openai/` provider with `api_base`: `completion`, streaming, `acompletion`, tools, `embedding`",
    ),
    Library(
        "LlamaIndex",
        "llama-index-llms-openai-like",
        "real/clients/test_llamaindex_real.py",
        "`OpenAILike`: chat, stream chat, `structured_predict` (in its own environment: it needs openai < 3)",
        environment=".venv-llamaindex",
    ),
    Library(
        "LangChain",
        "langchain-openai",
        "real/clients/test_langchain_real.py",
        "`ChatOpenAI`: invoke, stream, `bind_tools`, `with_structured_output`; `OpenAIEmbeddings`",
    ),
    Library(
        "Anthropic SDK",
        "anthropic",
        "real/test_anthropic_real.py",
        "`/v1/messages`: `messages.create`, the stream helper, stop sequences, a tool-use round trip, "
        "`count_tokens`, errors in Anthropic's shape",
    ),
    Library(
        "OpenAI SDK",
        "openai",
        "real/test_http_real.py",
        "chat, completions, responses, embeddings, models, streaming, tools, structured output",
    ),
)
