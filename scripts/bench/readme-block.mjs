// Writes a benchmark's generated text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in a
// README (every bench script that takes --readme). Warns and writes nothing without the markers.
import { readFileSync, writeFileSync } from 'node:fs';

export function writeReadmeBlock(path, name, text) {
  const readme = readFileSync(path, 'utf8');
  const begin = `<!-- ${name}:begin -->`;
  const end = `<!-- ${name}:end -->`;
  const a = readme.indexOf(begin);
  const b = readme.indexOf(end);
  if (a < 0 || b < a) {
    console.warn(`${path}: no ${begin} ... ${end} markers; table not written`);
    return;
  }
  writeFileSync(path, `${readme.slice(0, a + begin.length)}\n${text}\n${readme.slice(b)}`);
}
