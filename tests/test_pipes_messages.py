"""The trainer's Pipes messages reach the run whole: a message the child is still writing when the reader
reaches the end of the file is held until its newline arrives (Dagster's own reader decoded the part and
lost the adapter's materialization in CI), and a file that ends inside a message is reported, not dropped."""

import json
import sys

import dagster as dg
import pytest

from resources.launchers import _with_value
from resources.pipes_messages import WholeLineMessageReader, whole_lines


class RecordingHandler:
    """Stands in for Dagster's PipesMessageHandler: keeps what the reader hands over."""

    def __init__(self):
        self.messages: list[dict] = []
        self.failures: list[str] = []

    def handle_message(self, message: dict) -> None:
        self.messages.append(message)

    def report_pipes_framework_exception(self, origin: str, exc_info) -> None:
        self.failures.append(f"{origin}: {exc_info[1]}")


def _message(method: str, text: str) -> bytes:
    # ensure_ascii=False, unlike dagster_pipes' writer, so a cut can also fall inside a character's bytes.
    message = {"__dagster_pipes_version": "0.1", "method": method, "params": {"text": text}}
    return (json.dumps(message, ensure_ascii=False) + "\n").encode()


def test_a_message_read_while_half_written_is_held_until_its_newline(tmp_path):
    path = tmp_path / "messages.jsonl"
    first = _message("report_asset_materialization", "损失曲线 " * 500)
    cut = first.index("损".encode()) + 1
    path.write_bytes(first[:cut])
    calls = []

    def should_stop() -> bool:
        # Each call comes before one read: the first read sees only the cut, the second the rest.
        calls.append(len(calls))
        if len(calls) == 2:
            with path.open("ab") as stream:
                stream.write(first[cut:] + _message("closed", ""))
        return len(calls) > 2

    lines = list(whole_lines(str(path), should_stop, poll_seconds=0))
    assert [json.loads(line)["method"] for line in lines] == ["report_asset_materialization", "closed"]
    assert json.loads(lines[0])["params"]["text"] == "损失曲线 " * 500
    assert len(calls) == 3


def test_a_file_that_ends_inside_a_message_is_reported_to_the_run(tmp_path):
    path = tmp_path / "messages.jsonl"
    path.write_bytes(_message("log", "kept") + _message("report_asset_materialization", "x" * 100)[:40])
    with pytest.raises(ValueError, match="ends inside a message \\(40 bytes with no newline\\)"):
        list(whole_lines(str(path), lambda: True))

    handler = RecordingHandler()
    reader = WholeLineMessageReader()
    with reader.read_messages(handler) as params:
        with open(params["path"], "ab") as stream:
            stream.write(_message("log", "kept") + b'{"method": "report_asset_materia')
    assert [m["method"] for m in handler.messages] == ["log"]
    assert len(handler.failures) == 1 and "ends inside a message" in handler.failures[0]


def test_a_bad_message_is_reported_and_the_ones_after_it_still_arrive():
    handler = RecordingHandler()
    with WholeLineMessageReader().read_messages(handler) as params:
        with open(params["path"], "ab") as stream:
            stream.write(_message("log", "first") + b"{not json\n" + b"\xff\xfe\n" + _message("closed", ""))
    assert [m["method"] for m in handler.messages] == ["log", "closed"]
    assert len(handler.failures) == 2 and all("reader thread" in f for f in handler.failures)


SLOW_CHILD = """
import time
from contextlib import contextmanager

from dagster_pipes import PipesMessageWriter, PipesMessageWriterChannel, open_dagster_pipes


class HalvesChannel(PipesMessageWriterChannel):
    # Writes each message in two halves with a pause between, as a large write can land.
    def __init__(self, path):
        self.path = path

    def write_message(self, message):
        import json

        line = json.dumps(message) + "\\n"
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(line[: len(line) // 2])
            stream.flush()
            time.sleep(0.2)
            stream.write(line[len(line) // 2 :])


class HalvesWriter(PipesMessageWriter):
    @contextmanager
    def open(self, params):
        yield HalvesChannel(params["path"])


with open_dagster_pipes(message_writer=HalvesWriter()) as pipes:
    pipes.log.info("training")
    picture = "data:image/png;base64," + "iVBORw0KGgo" * 20_000
    pipes.report_asset_materialization(
        metadata={"curve": {"raw_value": picture, "type": "md"}, "steps": {"raw_value": 50, "type": "int"}}
    )
"""


def _materialize_through(reader: dg.PipesMessageReader, child) -> dg.ExecuteInProcessResult:
    @dg.asset
    def reported(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        return pipes.run(command=[sys.executable, str(child)], context=context).get_materialize_result()

    client = dg.PipesSubprocessClient(message_reader=reader)
    return dg.materialize(
        [reported], resources={"pipes": client}, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # Dagster's reader dying, below
def test_a_pipes_child_whose_large_report_lands_in_two_writes_reaches_the_run(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(SLOW_CHILD)

    result = _materialize_through(WholeLineMessageReader(), child)
    assert result.success
    metadata = result.asset_materializations_for_node("reported")[0].metadata
    assert metadata["steps"].value == 50
    assert len(metadata["curve"].value) == len("data:image/png;base64,") + 11 * 20_000

    # Why the reader is ours: Dagster's own decodes the first half, its thread dies, and the run goes on
    # without the report (drop ours once this starts to fail).
    lost = _materialize_through(dg.PipesTempFileMessageReader(), child)
    assert all("steps" not in m.metadata for m in lost.asset_materializations_for_node("reported"))


def test_a_trainer_report_without_its_result_fails_the_adapter_with_a_reason():
    with pytest.raises(
        RuntimeError, match="finished without reporting its 'train_result' \\(reported: \\['steps'\\]\\)"
    ):
        _with_value(dg.MaterializeResult(metadata={"steps": 3}))
    with pytest.raises(RuntimeError, match="reported: nothing"):
        _with_value(dg.MaterializeResult())
