"""How the node's vocabulary changes: the `set_vocabulary` / `get_vocabulary` services and the
`vocabulary`, `vocabulary_preset`, `negative_vocabulary` and `class_thresholds` parameters go
through one swap, which installs classes, negatives and thresholds together, and every change is
published (latched) on each camera's `vocabulary` and `label_info`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rclpy.parameter import Parameter
from rclpy.task import Future

from fcclip_ros.ros import parameters
from fcclip_ros.ros.parameters import VocabularyRequest
from fcclip_ros.srv import GetVocabulary, SetVocabulary
from fcclip_ros.vocabulary import Vocabulary, VocabularyError, VocabularySpec, VocabularyState

if TYPE_CHECKING:
    from fcclip_ros.ros.node import SegmenterNode


class VocabularyInterface:
    def __init__(self, node: SegmenterNode) -> None:
        self._node = node
        self.source: VocabularyRequest = parameters.requested_vocabulary(parameters.values(node))

    def create_services(self, group: Any) -> list[Any]:
        node = self._node
        return [node.create_service(SetVocabulary, "set_vocabulary", self._set_vocabulary,
                                    callback_group=group),
                node.create_service(GetVocabulary, "get_vocabulary", self._get_vocabulary,
                                    callback_group=group)]

    def publish(self, state: VocabularyState) -> None:
        """The latched outputs of every camera (also after a threshold change: LabelInfo)."""
        stamp = self._node.get_clock().now().to_msg()
        threshold = self._node.engine.object_mask_threshold
        for camera in self._node.cameras:
            camera.publish_vocabulary(state, stamp, threshold)

    def swap(self, make: Callable[[], VocabularySpec],
             shown: Callable[[VocabularySpec], VocabularyRequest], description: str) -> Future:
        """The one way the vocabulary changes, for the service and the parameters alike:
        validate (`make`), encode off the executor, install; then the vocabulary parameters
        show what is in force, as `shown` writes it (setting them to that changes nothing). The
        future, completed on the node's executor, gets the new state or the VocabularyError;
        VocabularyBusyError is raised at once while another swap encodes."""
        node = self._node
        if node.engine is None:
            raise VocabularyError(f"the node is {node.lifecycle_state()}: configure it first")
        finished = Future(executor=node.executor)
        finished.add_done_callback(lambda _: None)  # so that completing it wakes the executor

        def done(outcome: VocabularyState | VocabularyError) -> None:
            if isinstance(outcome, VocabularyState):
                self.source = shown(outcome.spec)
                node.get_logger().info(f"vocabulary v{outcome.version}: {outcome.spec.summary()}")
                node.set_parameters_atomically(self.source.parameters())
            finished.set_result(outcome)

        node.engine.vocabulary.swap_in_background(make, done, description)
        return finished

    async def _set_vocabulary(
        self, request: SetVocabulary.Request, response: SetVocabulary.Response
    ) -> SetVocabulary.Response:
        """A coroutine: while the text encoder runs, it holds no executor thread. The request
        replaces classes, negatives and thresholds together."""
        entries, preset = tuple(request.classes), request.preset.strip()
        negatives, thresholds = tuple(request.negative_classes), tuple(request.class_thresholds)
        try:
            if not entries and not preset:
                raise VocabularyError("empty request: give classes or a preset")
            if entries and preset:
                raise VocabularyError("give either classes or a preset, not both")
            outcome = await self.swap(
                lambda: VocabularySpec.from_request(entries or None, preset or None, negatives,
                                                    thresholds),
                lambda spec: VocabularyRequest(entries, preset, negatives,
                                               spec.threshold_entries),
                f"preset {preset!r}" if preset else f"{len(entries)} classes")
        except VocabularyError as error:
            outcome = error
        if isinstance(outcome, VocabularyError):
            state = self._node.engine.vocabulary.current
            response.success, response.message = False, str(outcome)
            self._node.get_logger().warning(f"set_vocabulary refused: {outcome}")
        else:
            state = outcome
            response.success = True
            response.message = f"vocabulary v{state.version}: {state.spec.summary()}"
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
        try:
            spec = requested.spec()
        except VocabularyError as error:
            raise VocabularyError(_parameter_advice(error, changes, values)) from None
        if node.engine is None:
            return
        previous = [Parameter(name, value=node.get_parameter(name).value)
                    for name in parameters.VOCABULARY]

        def put_back_on_failure(finished: Future) -> None:
            if isinstance(finished.result(), VocabularyError):
                node.get_logger().error(f"vocabulary parameters not applied: {finished.result()}")
                node.set_parameters_atomically(previous)

        description = (f"preset {requested.preset!r}" if requested.preset
                       else f"{len(requested.classes)} classes")
        self.swap(lambda: spec, lambda _: requested, description).add_done_callback(
            put_back_on_failure)


def _parameter_advice(error: VocabularyError, changes: dict[str, Any],
                      values: dict[str, Any]) -> str:
    """The reason, and how to get out of it when the refused value may be valid in itself: the
    parameters change one at a time, so a new class list must still fit the thresholds and
    negatives in force."""
    others = [name for name in ("class_thresholds", "negative_vocabulary")
              if name not in changes and values[name]]
    if {"vocabulary", "vocabulary_preset"} & changes.keys() and others:
        return (f"{error} (the {' and '.join(others)} in force must fit the new classes: change "
                "them first, or use the set_vocabulary service, which replaces all at once)")
    return str(error)
