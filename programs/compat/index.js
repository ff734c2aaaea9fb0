// Idioms of Node.js programs from judge and benchmark collections. Each line
// is "idiom: result"; index.js.out is what Debian 13 prints.
const fs = require('fs');
const http = require('http');
const dns = require('dns');
const os = require('os');
const path = require('path');
const { execSync } = require('child_process');

async function idiom(name, run) {
  let value;
  try {
    value = await run();
  } catch (e) {
    value = `FAILED ${e.code || e.name}: ${e.message}`;
  }
  console.log(`${name}: ${typeof value === 'string' ? value : JSON.stringify(value)}`);
}

function readDevStdin() {
  const data = fs.readFileSync('/dev/stdin');
  const numbers = data.toString().split('\n').filter((l) => l !== '');
  const sum = numbers.reduce((total, n) => total + BigInt(n), 0n);
  return `${data.length} bytes, ${numbers.length} lines, sum ${sum}`;
}

function localHttp() {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => res.end('hello from http.createServer'));
    server.on('error', reject);
    server.listen(0, 'localhost', () => {
      const { port } = server.address();
      http.get({ host: 'localhost', port, path: '/' }, (res) => {
        let body = '';
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => {
          server.close();
          resolve(body);
        });
      }).on('error', reject);
    });
  });
}

async function resolveLocalhost() {
  const addresses = await dns.promises.lookup('localhost', { all: true });
  return [...new Set(addresses.map((a) => a.address))].sort();
}

function writablePlaces() {
  const tmp = path.join(os.tmpdir(), 'written.txt');
  fs.writeFileSync(tmp, 't');
  const home = path.join(os.homedir(), 'written.txt');
  fs.writeFileSync(home, 'h');
  return fs.readFileSync(tmp, 'utf8') + fs.readFileSync(home, 'utf8');
}

(async () => {
  await idiom('js-fs.readFileSync-/dev/stdin', readDevStdin);
  await idiom('js-write-/dev/stderr', () => {
    fs.writeFileSync('/dev/stderr', 'written to /dev/stderr\n');
    return 'ok';
  });
  await idiom('js-http.createServer-and-http.get-on-localhost', localHttp);
  await idiom('js-dns.lookup-localhost', resolveLocalhost);
  await idiom('js-hostname-is-/etc/hostname', () => os.hostname() === fs.readFileSync('/etc/hostname', 'utf8').trim());
  await idiom('js-child_process.execSync', () => execSync('echo $((6*7))').toString().trim());
  await idiom('js-os.cpus', () => os.cpus().length >= 1 && os.availableParallelism() >= 1);
  await idiom('js-unicode-output', () => 'héllo wörld ☃ 日本語 🎉');
  await idiom('js-unicode-arguments', () => process.argv.slice(2));
  await idiom('js-time-zone', () => Intl.DateTimeFormat().resolvedOptions().timeZone);
  await idiom('js-/tmp-and-$HOME-writable', writablePlaces);
})();
