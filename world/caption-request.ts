/** What a caption asks for: the objects (with the attributes it names) and the background. */
import type { Relation } from "./grammar.js";
import type { BackgroundColour, ObjectColour, Position, Shape, Size } from "./vocabulary.js";

export interface ObjectRequest {
  readonly shape: Shape;
  readonly colour: ObjectColour;
  /** Absent when the caption does not say. */
  readonly size?: Size;
  readonly position?: Position;
}

export interface CaptionRequest {
  readonly objects: readonly ObjectRequest[];
  readonly background?: BackgroundColour;
  /** Where objects[0] is relative to objects[1], when the caption says so by a relation. */
  readonly relation?: Relation;
}
