/** The first `count` values of a (never-ending) iterator, such as `worldCaptions`. */
export function take<T>(iterator: Iterator<T>, count: number): T[] {
  const out: T[] = [];
  for (let i = 0; i < count; i++) out.push(iterator.next().value as T);
  return out;
}
