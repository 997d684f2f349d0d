/**
 * Terminal output as plain text: removes ANSI escape sequences (CSI `ESC [ … final`, OSC
 * `ESC ] … BEL|ESC \`, DCS/SOS/PM/APC strings, two-byte `ESC x`), C1 CSI (0x9b) and the other
 * control characters except tab and newline. Carriage returns go too (a progress bar's redraws
 * collapse into one line).
 */
// eslint-disable-next-line no-control-regex
const SEQUENCES = /\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][\s\S]*?(?:\x07|\x1b\\|$)|\x1b[ -/]*[0-~]?/g;
// eslint-disable-next-line no-control-regex
const CONTROLS = /[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]/g;

export function stripTerminalEscapes(text: string): string {
  return text.replace(SEQUENCES, '').replace(CONTROLS, '');
}
