"""How the node's vocabulary changes: the `set_vocabulary` / `get_vocabulary` services and the
`vocabulary` / `vocabulary_preset` parameters go through one swap, and every change is published
(latched) on each camera's `vocabulary` and `label_info`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rclpy.parameter import Parameter
from rclpy.task import Future

from fcclip_ros.ros import parameters
from fcclip_ros.srv import GetVocabulary, SetVocabulary
from fcclip_ros.vocabulary import Vocabulary, VocabularyError, VocabularyState

if TYPE_CHECKING:
    from fcclip_ros.ros.node import SegmenterNode

Requested = tuple[tuple[str, ...], str]  # (classes, preset): one of them empty


class VocabularyInterface:
    def __init__(self, node: SegmenterNode) -> None:
        self._node = node
        self.source: Requested = parameters.requested_vocabulary(parameters.values(node))

    def create_services(self, group: Any) -> list[Any]:
        node = self._node
        return [node.create_service(SetVocabulary, "set_vocabulary", self._set_vocabulary,
                                    callback_group=group),
                node.create_service(GetVocabulary, "get_vocabulary", self._get_vocabulary,
                                    callback_group=group)]

    def publish(self, state: VocabularyState) -> None:
        stamp = self._node.get_clock().now().to_msg()
        for camera in self._node.cameras:
            camera.publish_vocabulary(state, stamp)

    def swap(self, requested: Requested, validated: Vocabulary | None = None) -> Future:
        """The one way the vocabulary changes, for the service and the parameters alike:
        validate (unless done), encode off the executor, install; then the vocabulary parameters
        show what is in force (setting them to that changes nothing). The future, completed on
        the node's executor, gets the new state or the VocabularyError; VocabularyBusyError is
        raised at once while another swap encodes."""
        node = self._node
        entries, preset = requested
        if node.engine is None:
            raise VocabularyError(f"the node is {node.lifecycle_state()}: configure it first")
        finished = Future(executor=node.executor)
        finished.add_done_callback(lambda _: None)  # so that completing it wakes the executor

        def done(outcome: VocabularyState | VocabularyError) -> None:
            if isinstance(outcome, VocabularyState):
                self.source = requested
                node.get_logger().info(
                    f"vocabulary v{outcome.version}: {outcome.vocabulary.summary()}"
                )
                in_force = [Parameter("vocabulary", Parameter.Type.STRING_ARRAY, list(entries))]
                if preset:
                    in_force.append(Parameter("vocabulary_preset", Parameter.Type.STRING, preset))
                node.set_parameters_atomically(in_force)
            finished.set_result(outcome)

        node.engine.vocabulary.swap_in_background(
            (lambda: validated) if validated else lambda: Vocabulary.from_request(
                entries or None, preset or None),
            done,
            f"preset {preset!r}" if preset else f"{len(entries)} classes",
        )
        return finished

    async def _set_vocabulary(
        self, request: SetVocabulary.Request, response: SetVocabulary.Response
    ) -> SetVocabulary.Response:
        """A coroutine: while the text encoder runs, it holds no executor thread."""
        entries, preset = tuple(request.classes), request.preset.strip()
        try:
            if not entries and not preset:
                raise VocabularyError("empty request: give classes or a preset")
            if entries and preset:
                raise VocabularyError("give either classes or a preset, not both")
            outcome = await self.swap((entries, "") if entries else ((), preset))
        except VocabularyError as error:
            outcome = error
        if isinstance(outcome, VocabularyError):
            state = self._node.engine.vocabulary.current
            response.success, response.message = False, str(outcome)
            self._node.get_logger().warning(f"set_vocabulary refused: {outcome}")
        else:
            state = outcome
            response.success = True
            response.message = f"vocabulary v{state.version}: {state.vocabulary.summary()}"
        response.version = state.version
        response.classes = list(state.vocabulary.entries)
        return response

    def _get_vocabulary(
        self, _request: GetVocabulary.Request, response: GetVocabulary.Response
    ) -> GetVocabulary.Response:
        state = self._node.engine.vocabulary.current
        response.version = state.version
        response.classes = list(state.vocabulary.entries)
        response.is_thing = list(state.vocabulary.is_thing)
        return response

    def apply_parameters(self, changes: dict[str, Any]) -> None:
        """Validate at once, so that `ros2 param set` answers with the reason; then swap in the
        background, and if that fails put the parameters back to the vocabulary in force.
        Unconfigured, the values are only checked: configure uses them."""
        node = self._node
        values = parameters.values(node) | changes
        if "vocabulary_preset" in changes and "vocabulary" not in changes and values["vocabulary"]:
            # Only without pre-set callbacks (Humble), which would have cleared the classes.
            raise VocabularyError(
                "`vocabulary` lists classes, which take precedence over a preset: set vocabulary"
                " to [] together with vocabulary_preset, or use the set_vocabulary service"
            )
        requested = parameters.requested_vocabulary(values)
        Vocabulary.from_preset(values["vocabulary_preset"])  # checked even while classes win
        if requested == self.source:
            return  # in force already (e.g. the parameters catching up with a swap)
        entries, preset = requested
        vocabulary = Vocabulary.from_request(entries or None, preset or None)
        if node.engine is None:
            return
        previous = [
            Parameter(name, value=node.get_parameter(name).value)
            for name in ("vocabulary", "vocabulary_preset")
        ]

        def put_back_on_failure(finished: Future) -> None:
            if isinstance(finished.result(), VocabularyError):
                node.get_logger().error(f"vocabulary parameters not applied: {finished.result()}")
                node.set_parameters_atomically(previous)

        self.swap(requested, vocabulary).add_done_callback(put_back_on_failure)
